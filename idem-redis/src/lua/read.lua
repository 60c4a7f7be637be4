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
local state, left = lease_state(key, e)
if not state then
  return { R_CORRUPT, left }
end
if state == 'free' then
  return { R_FREE }
end
if state == 'finished' then
  -- What is left of its retention: the key's PTTL.
  left = redis.call('PTTL', key)
  if left < 0 then
    return { R_CORRUPT, 'finished record without an expiry' }
  end
end
return { R_RECORD, e.phase, e.fencing, string.sub(e.fp, 2), left, e.owner or e.payload }
