-- Complete or fail KEYS[1]. ARGV: owner, fencing, retention (ms), payload,
-- phase (3 completed, 4 failed). idem_core::lifecycle::{complete, fail}.
local key, owner, fencing = KEYS[1], ARGV[1], tonumber(ARGV[2])
local retention, payload, phase = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local e, why = load(key, now)
if why then
  return { R_CORRUPT, why }
end
if not held_by(e, owner, fencing) then
  return { R_LEASE_LOST }
end
put(key, now, now + retention, phase, e.fencing, fingerprint_field(e.fp) .. payload)
return { R_DONE }
