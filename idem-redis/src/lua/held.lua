-- The hot path of finish, renew and release, run before the record codec is even defined
-- (so it builds no closure): read KEYS[1] and tell whether it is a claimed record held by the
-- lease ARGV[1], which is the lease as a record without a fingerprint starts: its header
-- (version, CLAIMED and its fencing number), the flag 0, its owner (27 bytes). A lapsed
-- lease nobody took over still holds its key, for as long as the key is there.
-- Lean on purpose (Redis runs it once per finish, and a finish with it costs Redis within a
-- few percent of a bare compare-and-set): without a fingerprint (35 bytes), one plain
-- string.find compares header, flag and owner in place and builds no string; with one (67
-- bytes, flag 1), the header and the owner are found on each side of the fingerprint. The
-- trace TTL at the end is not read here: finish and renew replace it, and release, which
-- uses it, checks it (a bad one is then a corrupt record, found by the codec).
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
local len, lease = #raw, ARGV[1]
local held = (len == 35 and string.find(raw, lease, 1, true) == 1)
  or (len == 67 and string.byte(raw, 11) == 1
    and string.find(raw, string.sub(lease, 1, 10), 1, true) == 1
    and string.find(raw, string.sub(lease, 12), 44, true) == 44)
