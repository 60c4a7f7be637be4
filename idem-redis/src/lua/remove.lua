-- Delete KEYS[1] whatever it holds; answer { R_DONE, 1 } when a record (a live claim or a
-- finished key) was there, as idem_core::lifecycle::remove does. A value that does not
-- decode is deleted too and counts as a record: removing is how a corrupt key is cleared.
local key = KEYS[1]
local now = now_ms()
local e, why = load(key, now)
local existed = redis.call('DEL', key)
if why then
  return { R_DONE, 1 }
end
if existed == 0 or not e or e.phase == VACANT then
  return { R_DONE, 0 }
end
if e.phase == CLAIMED and e.lease_until <= now then
  return { R_DONE, 0 }
end
return { R_DONE, 1 }
