-- The hot path of finish, renew and release, run before the record codec is even defined
-- (so it builds no closure): read KEYS[1] and tell whether it is a well-formed claimed
-- record held by the lease whose record header ('\2\1' and its fencing number) is ARGV[1]
-- and whose owner is ARGV[2]. A lapsed lease nobody took over still holds its key, for as
-- long as the key is there.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
local len, held, trace_ttl = #raw, false, 0
-- 35 bytes without a fingerprint (flag 0), 67 with one (flag 1).
if (len == 35 or len == 67) and string.byte(raw, 11) == (len - 35) / 32
    and string.sub(raw, 1, 10) == ARGV[1] and string.sub(raw, -24, -9) == ARGV[2] then
  trace_ttl = struct.unpack('>I8', raw, len - 7)
  held = trace_ttl >= 1 and trace_ttl < MAX_EXACT
end
