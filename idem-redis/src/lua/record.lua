-- The record codec, in every script of idem-redis (ahead of claim, read and remove; after
-- the hot path of finish, renew and release, which only reach it for a key not theirs).
--
-- One Redis string per idem key. Big-endian, version 2:
--   version u8 = 2 | phase u8 | fencing u64 | then by phase:
--   claimed (1):            fp_flag u8 [fingerprint 32] | owner 16 | trace_ttl u64
--   vacant (2):             nothing (a released key, kept only for its fencing number)
--   completed (3) / failed (4): fp_flag u8 [fingerprint 32] | payload (the rest, any bytes)
-- The record holds no instant: the key's own TTL (PX, Redis's clock) is its expiry, and a
-- claimed key is written with PX = lease TTL + trace TTL, so its lease ends when PTTL falls
-- to trace_ttl (idem_core::lifecycle::trace_ttl of the lease TTL, computed by the caller).
-- The key is remembered trace_ttl after that, so the next acquisition gets a larger fencing
-- number, and a release keeps it as long. A lease or record is live exactly while its key is
-- there, so only a claim that meets another owner's lease, and read and remove, ask the
-- clock (PTTL); none uses TIME.
--
-- Lua numbers are doubles: every u64 read is refused from 2^53 up, where doubles stop being
-- exact (MAX_EXACT), so fencing arithmetic never rounds (a key would need 2^53 acquisitions
-- to get there). The phases, VERSION, MAX_EXACT and the R_ reply codes are locals defined
-- ahead of every script from src/record.rs and src/reply.rs.

-- The entry in raw: phase, fencing, fp (the fingerprint field: flag byte and digest), then
-- owner and trace_ttl (claimed) or payload (finished); or nil and why it does not decode.
local function decode(raw)
  local len = #raw
  if len < 10 then
    return nil, 'record of ' .. len .. ' bytes is shorter than its header'
  end
  local version, phase, fencing, pos = struct.unpack('>BBI8', raw)
  if version ~= VERSION then
    return nil, 'unknown record version ' .. version
  end
  if fencing < 1 or fencing >= MAX_EXACT then
    return nil, 'fencing number out of range'
  end
  if phase == VACANT then
    if len ~= 10 then
      return nil, 'released record with trailing bytes'
    end
    return { phase = phase, fencing = fencing }
  end
  if phase ~= CLAIMED and phase ~= COMPLETED and phase ~= FAILED then
    return nil, 'unknown phase ' .. phase
  end
  if len < 11 then
    return nil, 'record lacks its fingerprint flag'
  end
  local flag = string.byte(raw, 11)
  local body = 12
  if flag == 1 then
    if len < 43 then
      return nil, 'truncated fingerprint'
    end
    body = 44
  elseif flag ~= 0 then
    return nil, 'bad fingerprint flag ' .. flag
  end
  local e = { phase = phase, fencing = fencing, fp = string.sub(raw, 11, body - 1) }
  if phase == CLAIMED then
    if len ~= body + 23 then
      return nil, 'claimed record of ' .. len .. ' bytes has the wrong length'
    end
    e.owner = string.sub(raw, body, body + 15)
    e.trace_ttl = struct.unpack('>I8', raw, body + 16)
    if e.trace_ttl < 1 or e.trace_ttl >= MAX_EXACT then
      return nil, 'trace TTL out of range'
    end
  else
    e.payload = string.sub(raw, body)
  end
  return e
end

