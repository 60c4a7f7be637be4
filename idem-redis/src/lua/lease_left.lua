-- What is left of a claimed entry's lease (<= 0 once it lapsed), from the key's PTTL.
local function lease_left(key, e)
  local pttl = redis.call('PTTL', key)
  if pttl < 0 then
    return nil, 'claimed record without an expiry'
  end
  return pttl - e.trace_ttl
end

