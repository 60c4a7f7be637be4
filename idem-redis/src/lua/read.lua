-- Report KEYS[1] as idem_core::lifecycle::Entry::record does: free (vacant, lapsed, gone)
-- or { R_RECORD, phase, fencing, fingerprint, ms left, owner or payload }.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return { R_FREE }
end
local e, why = decode(raw)
if not e then
  return { R_CORRUPT, why }
end
if e.phase == VACANT then
  return { R_FREE }
end
if e.phase == CLAIMED then
  local left, bad = lease_left(key, e)
  if not left then
    return { R_CORRUPT, bad }
  end
  if left <= 0 then
    return { R_FREE }
  end
  return { R_RECORD, CLAIMED, e.fencing, string.sub(e.fp, 2), left, e.owner }
end
local pttl = redis.call('PTTL', key)
if pttl < 0 then
  return { R_CORRUPT, 'finished record without an expiry' }
end
return { R_RECORD, e.phase, e.fencing, string.sub(e.fp, 2), pttl, e.payload }
