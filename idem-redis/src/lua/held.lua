-- The hot path of finish, renew and release, run before the record codec is even defined
-- (so it builds no closure): read KEYS[1] and tell whether it is a well-formed claimed
-- record held by the lease whose record header (version, CLAIMED and its fencing number) is
-- ARGV[1] and whose owner is ARGV[2]. A lapsed lease nobody took over still holds its key,
-- for as long as the key is there.
-- Lean on purpose (Redis runs it once per finish): the header and owner are compared in
-- place with a plain string.find, which builds no string, and nothing else is read.
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
local len, held, trace_ttl = #raw, false, 0
-- 35 bytes without a fingerprint (flag 0), 67 with one (flag 1); the owner starts 24 bytes
-- before the end.
if (len == 35 or len == 67) and string.byte(raw, 11) == (len - 35) / 32
    and string.find(raw, ARGV[1], 1, true) == 1
    and string.find(raw, ARGV[2], len - 23, true) == len - 23 then
  trace_ttl = struct.unpack('>I8', raw, len - 7)
  held = trace_ttl >= 1 and trace_ttl < MAX_EXACT
end
