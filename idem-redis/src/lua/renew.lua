-- Extend the lease on KEYS[1] to a TTL from now, after held.lua. ARGV: the lease (see
-- held.lua), PX (lease TTL + trace TTL, ms), the trace TTL as u64 big-endian.
-- idem_core::lifecycle::renew.
if held then
  redis.call('SET', key, string.sub(raw, 1, -9) .. ARGV[3], 'PX', ARGV[2])
  return R_DONE
end
