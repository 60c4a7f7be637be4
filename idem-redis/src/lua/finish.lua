-- Complete or fail KEYS[1], after held.lua. ARGV: the lease (see held.lua), retention (ms),
-- the finished record as it is without a fingerprint: header (VERSION, COMPLETED or FAILED,
-- fencing), flag 0, payload. Sent whole so that, without a fingerprint, it is written as it
-- came; with one, the claim's fingerprint field (bytes 11 to 43) takes the flag's place.
-- idem_core::lifecycle::{complete, fail}.
if held then
  local value = ARGV[3]
  if len == 67 then
    value = string.sub(value, 1, 10) .. string.sub(raw, 11, 43) .. string.sub(value, 12)
  end
  redis.call('SET', key, value, 'PX', ARGV[2])
  return R_DONE
end
