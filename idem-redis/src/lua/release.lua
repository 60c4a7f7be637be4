-- Free KEYS[1] without an outcome, remembering its fencing number for the trace TTL, after
-- held.lua. ARGV: the lease (see held.lua). A trace TTL out of range falls through to the
-- codec, which finds the record corrupt. idem_core::lifecycle::release.
if held then
  local trace_ttl = struct.unpack('>I8', raw, len - 7)
  if trace_ttl >= 1 and trace_ttl < MAX_EXACT then
    redis.call('SET', key, string.char(VERSION, VACANT) .. string.sub(raw, 3, 10), 'PX', trace_ttl)
    return R_DONE
  end
end
