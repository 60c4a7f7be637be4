-- Complete or fail KEYS[1], after held.lua. ARGV: the lease's record header and owner (see
-- held.lua), the finished header ('\2', phase 3 completed or 4 failed, fencing), retention
-- (ms), payload. idem_core::lifecycle::{complete, fail}.
if held then
  redis.call('SET', key, ARGV[3] .. string.sub(raw, 11, -25) .. ARGV[5], 'PX', ARGV[4])
  return R_DONE
end
