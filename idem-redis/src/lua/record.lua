-- The record codec and clock, prepended to every script of idem-redis.
--
-- One Redis string per idem key. Big-endian, version 1:
--   version u8 = 1 | phase u8 | fencing u64 | expires_at u64 (ms, Redis clock) | then by phase:
--   claimed (1):            fp_flag u8 [fingerprint 32] | owner 16 | trace_ttl u64
--   vacant (2):             nothing (a released key, kept only for its fencing number)
--   completed (3) / failed (4): fp_flag u8 [fingerprint 32] | payload (the rest, any bytes)
-- A claimed record's lease ends at expires_at - trace_ttl: the key is remembered trace_ttl
-- (idem_core::lifecycle::trace_ttl of the lease TTL, computed by the caller) after that,
-- so the next acquisition gets a larger fencing number, and a release keeps it as long.
--
-- expires_at in the value is authoritative; the key's PX TTL is set to the same instant so
-- Redis drops the key on its own, and no sweeper is needed.
--
-- Lua numbers are doubles: every u64 read is refused from 2^53 up, where doubles stop being
-- exact, so fencing arithmetic never rounds (a key would need 2^53 acquisitions to get there).

local VERSION = 1
local CLAIMED, VACANT, COMPLETED, FAILED = 1, 2, 3, 4
local HEADER_LEN = 18
local MAX_EXACT = 9007199254740992

-- Reply codes, shared with src/reply.rs.
local R_CORRUPT, R_ACQUIRED, R_IN_PROGRESS, R_COMPLETED, R_FAILED, R_MISMATCH = 0, 1, 2, 3, 4, 5
local R_DONE, R_LEASE_LOST, R_FREE, R_RECORD = 6, 7, 8, 9

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function decode(raw)
  local len = #raw
  if len < HEADER_LEN then
    return nil, 'record of ' .. len .. ' bytes is shorter than its header'
  end
  local version, phase, fencing, expires_at, pos = struct.unpack('>BBI8I8', raw)
  if version ~= VERSION then
    return nil, 'unknown record version ' .. version
  end
  if fencing < 1 or fencing >= MAX_EXACT or expires_at >= MAX_EXACT then
    return nil, 'fencing number or expiry out of range'
  end
  local e = { phase = phase, fencing = fencing, expires_at = expires_at, fp = '' }
  if phase == VACANT then
    if len ~= HEADER_LEN then
      return nil, 'released record with trailing bytes'
    end
    return e
  end
  if phase ~= CLAIMED and phase ~= COMPLETED and phase ~= FAILED then
    return nil, 'unknown phase ' .. phase
  end
  if len < pos then
    return nil, 'record lacks its fingerprint flag'
  end
  local flag = string.byte(raw, pos)
  pos = pos + 1
  if flag == 1 then
    if len < pos + 31 then
      return nil, 'truncated fingerprint'
    end
    e.fp = string.sub(raw, pos, pos + 31)
    pos = pos + 32
  elseif flag ~= 0 then
    return nil, 'bad fingerprint flag ' .. flag
  end
  if phase == CLAIMED then
    if len ~= pos + 23 then
      return nil, 'claimed record of ' .. len .. ' bytes has the wrong length'
    end
    e.owner = string.sub(raw, pos, pos + 15)
    e.trace_ttl = struct.unpack('>I8', raw, pos + 16)
    if e.trace_ttl < 1 or e.trace_ttl > expires_at then
      return nil, 'trace TTL out of range'
    end
    e.lease_until = expires_at - e.trace_ttl
  else
    e.payload = string.sub(raw, pos)
  end
  return e
end

-- The live entry under key at now: nil for a free key, or nil and why it does not decode.
local function load(key, now)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then
    return nil, 'the key holds a value of another type (' .. tostring(raw.err) .. ')'
  end
  if not raw then
    return nil
  end
  local e, why = decode(raw)
  if not e then
    return nil, why
  end
  if now >= e.expires_at then
    return nil
  end
  return e
end

local function fingerprint_field(fp)
  if fp == '' then
    return '\0'
  end
  return '\1' .. fp
end

local function put(key, now, expires_at, phase, fencing, body)
  local value = struct.pack('>BBI8I8', VERSION, phase, fencing, expires_at) .. body
  redis.call('SET', key, value, 'PX', string.format('%d', expires_at - now))
end

local function put_claimed(key, now, fencing, fp, owner, ttl, trace_ttl)
  local expires_at = now + ttl + trace_ttl
  put(key, now, expires_at, CLAIMED, fencing,
    fingerprint_field(fp) .. owner .. struct.pack('>I8', trace_ttl))
end

-- Whether the lease (owner, fencing) still holds e; a lapsed lease nobody took over does.
local function held_by(e, owner, fencing)
  return e ~= nil and e.phase == CLAIMED and e.owner == owner and e.fencing == fencing
end
