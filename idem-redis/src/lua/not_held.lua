-- Not held by the lease: lease lost, unless the value does not decode.
local e, why = decode(raw)
if not e then
  return { R_CORRUPT, why }
end
return R_LEASE_LOST
