-- Delete KEYS[1] whatever it holds; answer { R_DONE, 1 } when a record (a live claim or a
-- finished key) was there, as idem_core::lifecycle::remove does. A value that does not
-- decode, or a value of another type, is deleted too and counts as a record: removing is
-- how a corrupt key is cleared.
local key = KEYS[1]
local raw = redis.pcall('GET', key)
if type(raw) == 'table' then
  redis.call('DEL', key)
  return { R_DONE, 1 }
end
if not raw then
  return { R_DONE, 0 }
end
local e = decode(raw)
local live = 1
if e and e.phase == VACANT then
  live = 0
elseif e and e.phase == CLAIMED then
  local left = lease_left(key, e)
  if left and left <= 0 then
    live = 0
  end
end
redis.call('DEL', key)
return { R_DONE, live }
