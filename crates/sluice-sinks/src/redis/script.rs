//! The one write that needs the cached row and cannot read it first: an update of a hash
//! row without its unchanged TOAST columns. Sent as `EVAL` inside the batch's `MULTI`
//! (not `EVALSHA`: a server that lost its script cache would fail that one command and
//! apply the rest of the transaction).

/// KEYS[1] the row; ARGV[1] the TTL in seconds, ARGV[2] the number n of field/value
/// pairs to set, then the n pairs, then the fields to remove (NULL columns). A row that
/// is not cached as a hash has nothing to merge with: it is removed (a JSON string left
/// by the other format would be stale) and 1 is returned, so the sink counts it.
pub(super) const HMERGE: &str = r#"
local row = KEYS[1]
if redis.call('TYPE', row).ok ~= 'hash' then
  redis.call('DEL', row)
  return 1
end
local n = tonumber(ARGV[2])
local i = 3
local stop = i + 2 * n
while i < stop do
  redis.call('HSET', row, ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', row, ARGV[i])
  i = i + 1
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', row, ttl) end
return 0
"#;
