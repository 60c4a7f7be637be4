-- Consume the one-time token at KEYS[1] for scope ARGV[1]: idem_core::TokenRecord::consume,
-- check for check, in one atomic step. Standalone: tokens do not use the record codec.
--
-- One Redis string per token, written by RedisTokenStore::issue (src/token.rs) with
-- SET NX PX, so the key's TTL is the token's life:
--   version u8 = 1 | state u8 (0 issued, 1 used) | scope (the rest, its bytes exactly)
-- Consuming rewrites the state with SET ... KEEPTTL (Redis >= 6.0): a used token stays,
-- marked, until the instant it was issued to expire, so repeats are told it was used.

-- TOKEN_VERSION, ISSUED, USED and the R_ reply codes are locals defined ahead of the script
-- from src/token.rs and src/reply.rs.

local key, scope = KEYS[1], ARGV[1]
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
local stored = string.sub(raw, 3)
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
redis.call('SET', key, string.char(TOKEN_VERSION, USED) .. scope, 'KEEPTTL')
return { R_CONSUMED }
