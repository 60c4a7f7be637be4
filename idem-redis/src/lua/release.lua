-- Free KEYS[1] without an outcome, remembering its fencing number for the trace TTL.
-- ARGV: the lease's record header, its owner. idem_core::lifecycle::release.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
if not held(raw, ARGV[1], ARGV[2]) then
  return not_held(raw)
end
local trace_ttl = struct.unpack('>I8', raw, #raw - 7)
redis.call('SET', key, '\2\2' .. string.sub(raw, 3, 10), 'PX', trace_ttl)
return R_DONE
