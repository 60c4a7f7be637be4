-- Claim KEYS[1]. ARGV: owner (16 bytes), lease TTL (ms), trace TTL (ms), fingerprint
-- ('' or 32 bytes).
-- The rules are idem_core::lifecycle::claim, line for line.
local key, owner, ttl, trace_ttl, fp = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local e, why = load(key, now)
if why then
  return { R_CORRUPT, why }
end

local function acquire(fencing)
  put_claimed(key, now, fencing, fp, owner, ttl, trace_ttl)
  return { R_ACQUIRED, fencing }
end

if not e then
  return acquire(1)
end
if e.phase == CLAIMED and e.owner == owner then
  -- The same attempt asking again (its first reply was lost): same lease, extended.
  if e.fp ~= fp then
    return { R_MISMATCH }
  end
  return acquire(e.fencing)
end
local found
if e.phase == COMPLETED then
  found = { R_COMPLETED, e.payload }
elseif e.phase == FAILED then
  found = { R_FAILED, e.payload }
elseif e.phase == CLAIMED and e.lease_until > now then
  found = { R_IN_PROGRESS, e.lease_until - now }
else
  -- Released, or a lapsed lease of another owner: free for anyone, fingerprint unchecked.
  return acquire(e.fencing + 1)
end
if e.fp ~= fp then
  return { R_MISMATCH }
end
return found
