-- Free KEYS[1] without an outcome, remembering its fencing number for the trace TTL, after
-- held.lua. ARGV: the lease's record header and owner. idem_core::lifecycle::release.
if held then
  redis.call('SET', key, string.char(VERSION, VACANT) .. string.sub(raw, 3, 10), 'PX', trace_ttl)
  return R_DONE
end
