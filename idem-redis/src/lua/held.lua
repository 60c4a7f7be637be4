-- Whether raw is a well-formed claimed record held by the lease whose header ('\2\1' and
-- its fencing number) is head and whose owner is owner: the hot path of finish, renew and
-- release, without building an entry.
local function held(raw, head, owner)
  local len = #raw
  if len ~= 35 and len ~= 67 then
    return false
  end
  if string.sub(raw, 1, 10) ~= head or string.sub(raw, -24, -9) ~= owner then
    return false
  end
  if string.byte(raw, 11) ~= (len == 35 and 0 or 1) then
    return false
  end
  local trace_ttl = struct.unpack('>I8', raw, len - 7)
  return trace_ttl >= 1 and trace_ttl < 9007199254740992
end

-- The answer of a transition that found raw not held by the lease: lease lost, unless raw
-- does not decode.
local function not_held(raw)
  local e, why = decode(raw)
  if not e then
    return { R_CORRUPT, why }
  end
  return R_LEASE_LOST
end
