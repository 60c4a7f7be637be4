-- Complete or fail KEYS[1], after held.lua. ARGV: the lease's record header and owner (see
-- held.lua), the finished header (VERSION, COMPLETED or FAILED, fencing), retention (ms),
-- payload. The finished record keeps the claim's fingerprint field (bytes 11 to len - 24).
-- idem_core::lifecycle::{complete, fail}.
if held then
  redis.call('SET', key, ARGV[3] .. string.sub(raw, 11, len - 24) .. ARGV[5], 'PX', ARGV[4])
  return R_DONE
end
