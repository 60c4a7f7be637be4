-- Free KEYS[1] without an outcome, remembering its fencing number for the trace TTL.
-- ARGV: owner, fencing. idem_core::lifecycle::release.
local key, owner, fencing = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local e, why = load(key, now)
if why then
  return { R_CORRUPT, why }
end
if not held_by(e, owner, fencing) then
  return { R_LEASE_LOST }
end
put(key, now, now + e.trace_ttl, VACANT, e.fencing, '')
return { R_DONE }
