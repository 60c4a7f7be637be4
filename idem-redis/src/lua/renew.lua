-- Extend the lease on KEYS[1] to a TTL from now. ARGV: owner, fencing, lease TTL (ms),
-- trace TTL (ms).
-- idem_core::lifecycle::renew.
local key, owner, fencing = KEYS[1], ARGV[1], tonumber(ARGV[2])
local ttl, trace_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local e, why = load(key, now)
if why then
  return { R_CORRUPT, why }
end
if not held_by(e, owner, fencing) then
  return { R_LEASE_LOST }
end
put_claimed(key, now, e.fencing, e.fp, owner, ttl, trace_ttl)
return { R_DONE }
