-- The hot path of finish, renew and release, run before the record codec is even defined
-- (so it builds no closure): read KEYS[1] and tell whether it is a claimed record held by the
-- lease ARGV[1], which is the lease as its claimed record starts: header (version, CLAIMED
-- and its fencing number), fingerprint flag and digest, owner (27 bytes, or 59 with a
-- fingerprint). A lapsed lease nobody took over still holds its key, for as long as the key
-- is there.
-- Lean on purpose (Redis runs it once per finish, and a finish with it costs Redis within a
-- few percent of a bare compare-and-set): when the lease's fingerprint field is the claim's
-- (as_sent), one plain string.find compares header, fingerprint and owner in place and
-- builds no string. A lease that does not carry the claim's fingerprint (one made with
-- Lease::new) is still its owner's: the header and the owner are then found on each side of
-- the claim's fingerprint field, and finish keeps the claim's field. The trace TTL at the
-- end is not read here: finish and renew replace it, and release, which uses it, checks it
-- (a bad one is then a corrupt record, found by the codec).
local key = KEYS[1]
local raw = redis.call('GET', key)
if not raw then
  return R_LEASE_LOST
end
local len, lease = #raw, ARGV[1]
local as_sent = len == #lease + 8 and string.find(raw, lease, 1, true) == 1
local held = as_sent
if not held and (len == 35 or len == 67) and string.byte(raw, 11) == (len - 35) / 32 then
  held = string.find(raw, string.sub(lease, 1, 10), 1, true) == 1
    and string.find(raw, string.sub(lease, -16), len - 23, true) == len - 23
end
