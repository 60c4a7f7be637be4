-- Complete or fail KEYS[1], after held.lua. ARGV: the lease (see held.lua), retention (ms),
-- the finished record whole: header (VERSION, COMPLETED or FAILED, fencing), the lease's
-- fingerprint flag and digest, payload; and a fourth (any value) when a WAIT follows the
-- script. When the lease's fingerprint field is the claim's, it is written as it came; when
-- not, the claim's field (bytes 11 to len - 24) takes the lease's place, so the record keeps
-- the fingerprint it was claimed with.
-- idem_core::lifecycle::{complete, fail}.
if held then
  local value = ARGV[3]
  if not as_sent then
    value = string.sub(value, 1, 10) .. string.sub(raw, 11, len - 24) .. string.sub(value, #lease - 15)
  end
  redis.call('SET', key, value, 'PX', ARGV[2])
  return R_DONE
end
-- Not held, but the key holds the very record this finish writes, and a WAIT follows: the
-- same finish sent again after its reply (and its WAIT's) was lost. The lease is spent all
-- the same; the record is written again as it is (same bytes, KEEPTTL), a write that
-- changes nothing but makes the WAIT behind this script on this connection count the
-- replicas that have it. Without a WAIT, nothing is written: LEASE_LOST, as ever.
if ARGV[4] and raw == ARGV[3] then
  redis.call('SET', key, raw, 'KEEPTTL')
  return R_FINISHED_BEFORE
end
