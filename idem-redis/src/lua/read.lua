-- Report KEYS[1] as idem_core::lifecycle::Entry::record does: free (vacant, lapsed, expired)
-- or { R_RECORD, phase, fencing, fingerprint, ms left, owner or payload }.
local now = now_ms()
local e, why = load(KEYS[1], now)
if why then
  return { R_CORRUPT, why }
end
if not e then
  return { R_FREE }
end
if e.phase == CLAIMED then
  if e.lease_until <= now then
    return { R_FREE }
  end
  return { R_RECORD, CLAIMED, e.fencing, e.fp, e.lease_until - now, e.owner }
end
if e.phase == VACANT then
  return { R_FREE }
end
return { R_RECORD, e.phase, e.fencing, e.fp, e.expires_at - now, e.payload }
