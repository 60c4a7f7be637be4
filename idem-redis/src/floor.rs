//! The floor the finish script is measured against, shared by idem-bench's raw Redis side and
//! the `server_cost` example so both measure the same script: not part of the API, and
//! hidden from the docs.

/// The minimal Lua compare-and-set that idem's finish script also does, without idem's
/// record codec: read `KEYS[1]`, compare its first 16 bytes (the owner field) with
/// `ARGV[1]`, and if they match write `ARGV[2]` with `PX ARGV[3]`. Answers 1 when it wrote,
/// 0 when not.
pub const COMPARE_AND_SET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 16) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";
