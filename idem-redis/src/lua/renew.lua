-- Extend the lease on KEYS[1] to a TTL from now. ARGV: the lease's record header, its
-- owner, PX (lease TTL + trace TTL, ms), the trace TTL as u64 big-endian.
-- idem_core::lifecycle::renew.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
if not held(raw, ARGV[1], ARGV[2]) then
  return not_held(raw)
end
redis.call('SET', key, string.sub(raw, 1, -9) .. ARGV[4], 'PX', ARGV[3])
return R_DONE
