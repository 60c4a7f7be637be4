-- Consume the one-time token at KEYS[1] for scope ARGV[1] as consumer ARGV[2] (its 16
-- bytes): idem_core::TokenRecord::consume, check for check, in one atomic step. Standalone:
-- tokens do not use the record codec.
--
-- One Redis string per token, written by RedisTokenStore::issue (src/token.rs) with
-- SET NX PX, so the key's TTL is the token's life:
--   version u8 = 1 | state u8 | ...
--     issued (0):   scope
--     used (1):     scope                 (written by stores that did not keep consumers)
--     used by (2):  consumer 16 | scope
-- where scope is the rest, its bytes exactly. Consuming rewrites the value as used by the
-- consumer with SET ... KEEPTTL (Redis >= 6.0): a used token stays, marked, until the instant
-- it was issued to expire, so repeats are told it was used, and the consumer's own resend
-- (its first reply was lost) is told it consumed.

-- TOKEN_VERSION, ISSUED, USED, USED_BY, CONSUMER_LEN and the R_ reply codes are locals
-- defined ahead of the script from src/record.rs and src/reply.rs.

local key, scope, consumer = KEYS[1], ARGV[1], ARGV[2]
local raw = redis.pcall('GET', key)
if type(raw) == 'table' then
  return { R_CORRUPT, 'the token key holds a value of another type (' .. tostring(raw.err) .. ')' }
end
if not raw then
  return { R_UNKNOWN }
end
-- A scope is never empty: anything shorter than header plus one byte was not written here.
if #raw < 3 then
  return { R_CORRUPT, 'token record of ' .. #raw .. ' bytes is shorter than its header and scope' }
end
local version, state = string.byte(raw, 1, 2)
if version ~= TOKEN_VERSION then
  return { R_CORRUPT, 'unknown token record version ' .. version }
end
-- A rejection hands the stored scope back: Rust decodes it (a scope that no Scope can be is
-- a corrupt record, not an answer), which Lua cannot do as Scope::new does.
if state == USED_BY then
  if #raw < 2 + CONSUMER_LEN + 1 then
    return { R_CORRUPT, 'used token record of ' .. #raw .. ' bytes is shorter than its header, consumer and scope' }
  end
  local stored = string.sub(raw, 3 + CONSUMER_LEN)
  -- The consumer's own resend, for the scope it consumed: answered as its first send was,
  -- and nothing written (the value and its TTL stay as they are).
  if string.sub(raw, 3, 2 + CONSUMER_LEN) == consumer and stored == scope then
    return { R_CONSUMED }
  end
  return { R_ALREADY_USED, stored }
end
local stored = string.sub(raw, 3)
-- Used before consumers were kept: no resend can be recognised as its consumer's.
if state == USED then
  return { R_ALREADY_USED, stored }
end
if state ~= ISSUED then
  return { R_CORRUPT, 'unknown token state ' .. state }
end
-- Another scope's attempt leaves the token as it is, usable by its owner.
if stored ~= scope then
  return { R_WRONG_SCOPE, stored }
end
redis.call('SET', key, string.char(TOKEN_VERSION, USED_BY) .. consumer .. scope, 'KEEPTTL')
return { R_CONSUMED }
