-- Free KEYS[1] whatever it holds; answer { R_DONE, 1 } when a record (a live claim or a
-- finished key) was there, as idem_core::lifecycle::remove does. ARGV[1]: the trace TTL of a
-- finished key (idem_core::lifecycle::trace_ttl(0), ms).
-- Like a release, removing leaves a vacant trace with the fencing number (for the claimed
-- record's own trace TTL, or ARGV[1]), so the next acquisition's number still grows while
-- the removed owner may be running. A key already vacant keeps its trace. A value that does
-- not decode, or a value of another type, is deleted: removing is how a corrupt key is
-- cleared.
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
if not e then
  redis.call('DEL', key)
  return { R_DONE, 1 }
end
if e.phase == VACANT then
  return { R_DONE, 0 }
end
local live, trace = 1, ARGV[1]
if e.phase == CLAIMED then
  trace = e.trace_ttl
end
-- A lapsed lease was not live; a claimed record without an expiry counts as live.
if lease_state(key, e) == 'free' then
  live = 0
end
redis.call('SET', key, string.char(VERSION, VACANT) .. string.sub(raw, 3, 10), 'PX', trace)
return { R_DONE, live }
