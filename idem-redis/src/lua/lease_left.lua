-- Where the lease of a decoded entry e of key stands on Redis's clock, as
-- idem_core::lifecycle::Entry::record tells it: 'free' (released, or a lease that lapsed:
-- anyone may claim the key), 'held' and the ms the lease has left (from the key's PTTL,
-- which counts the trace TTL after the lease), or 'finished' (no lease, no clock asked); nil
-- and why for a claimed record without an expiry.
local function lease_state(key, e)
  if e.phase == VACANT then
    return 'free'
  end
  if e.phase ~= CLAIMED then
    return 'finished'
  end
  local pttl = redis.call('PTTL', key)
  if pttl < 0 then
    return nil, 'claimed record without an expiry'
  end
  local left = pttl - e.trace_ttl
  if left <= 0 then
    return 'free'
  end
  return 'held', left
end
