-- Claim KEYS[1], when a plain `SET key value NX PX ttl GET` from the client found a claimed
-- or released record there. ARGV: the claimed record to write (with fencing number 1) and
-- its PX (lease TTL + trace TTL, ms).
-- The rules are idem_core::lifecycle::claim, line for line.
local key, value, px = KEYS[1], ARGV[1], ARGV[2]
local raw = redis.call('GET', key)
if not raw then
  redis.call('SET', key, value, 'PX', px)
  return { R_ACQUIRED, 1 }
end
local e, why = decode(raw)
if not e then
  return { R_CORRUPT, why }
end

local function acquire(fencing)
  redis.call('SET', key, string.char(VERSION, CLAIMED) .. struct.pack('>I8', fencing) .. string.sub(value, 11), 'PX', px)
  return { R_ACQUIRED, fencing }
end

-- A takeover: the next fencing number, or none past the exact range (MAX_EXACT), where
-- no key gets by use (2^53 acquisitions), only a record idem did not write; the same
-- number for a second owner would break fencing. idem_core::backend::lifecycle::next_fencing.
local function take_over(fencing)
  if fencing + 1 >= MAX_EXACT then
    return { R_CORRUPT, 'fencing number ' .. string.format('%.0f', fencing) .. ' is at the end of the range and cannot grow' }
  end
  return acquire(fencing + 1)
end

local fp, owner = string.sub(value, 11, -25), string.sub(value, -24, -9)
if e.phase == CLAIMED and e.owner == owner then
  -- The same attempt asking again (its first reply was lost): same lease, extended.
  if e.fp ~= fp then
    return { R_MISMATCH }
  end
  return acquire(e.fencing)
end
local state, left = lease_state(key, e)
if not state then
  return { R_CORRUPT, left }
end
if state == 'free' then
  -- Released, or another owner's lapsed lease: free for anyone, fingerprint unchecked.
  return take_over(e.fencing)
end
local found = { R_IN_PROGRESS, left }
if e.phase == COMPLETED then
  found = { R_COMPLETED, e.payload }
elseif e.phase == FAILED then
  found = { R_FAILED, e.payload }
end
if e.fp ~= fp then
  return { R_MISMATCH }
end
return found
