-- Complete or fail KEYS[1]. ARGV: the lease's record header ('\2\1' and its fencing
-- number), its owner, the finished header ('\2', phase 3 completed or 4 failed, fencing),
-- retention (ms), payload. idem_core::lifecycle::{complete, fail}: a lapsed lease nobody
-- took over still holds the key while the key is there.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
if not held(raw, ARGV[1], ARGV[2]) then
  return not_held(raw)
end
redis.call('SET', key, ARGV[3] .. string.sub(raw, 11, -25) .. ARGV[5], 'PX', ARGV[4])
return R_DONE
