//! The fenced write path's Lua scripts, and the writes gathered for one call of
//! [`WRITE`]. See the parent module's invariants.

/// A batch of fenced writes in one call. KEYS holds pairs: a row key and its table's id
/// hash. ARGV holds, per pair in order, its argument count, then the change's id, the
/// action (`set`, `hset`, `hmerge`, `del`), the TTL in seconds, and for `set` the JSON,
/// for `hset` and `hmerge` the number of field/value pairs, the pairs, and (hmerge) the
/// fields to remove. A write whose id is not newer than the row's stored id, or than its
/// table's truncate (the field `\0truncated` of the id hash; no row key can hold NUL), is
/// skipped. Returns how many `hmerge`s found no row (their keys are left absent).
/// A truncate is never inside a batch, so each table's mark is read once per call.
/// `\0max` is raised to the newest id applied, where the hash keeps it (or is new).
pub(super) const WRITE: &str = r#"
local marks = {}
local maxes = {}
local incomplete = 0
local a = 1
for k = 1, #KEYS, 2 do
  local row, ids = KEYS[k], KEYS[k + 1]
  local last = a + tonumber(ARGV[a])
  local id, action, ttl = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local i = a + 4
  a = last + 1
  local t = marks[ids]
  if t == nil then
    t = redis.call('HGET', ids, '\0truncated') or false
    marks[ids] = t
    local m = redis.call('HGET', ids, '\0max')
    if m then maxes[ids] = m elseif redis.call('EXISTS', ids) == 0 then maxes[ids] = '' else maxes[ids] = false end
  end
  local cur = redis.call('HGET', ids, row)
  if maxes[ids] and id > maxes[ids] then maxes[ids] = id end
  if (cur and cur >= id) or (t and t >= id) then
    -- fenced: this change is not newer than what the cache holds
  elseif action == 'hmerge' and redis.call('EXISTS', row) == 0 then
    redis.call('HSET', ids, row, id)
    incomplete = incomplete + 1
  else
    redis.call('HSET', ids, row, id)
    if action == 'del' then
      redis.call('DEL', row)
    elseif action == 'set' then
      if ttl > 0 then redis.call('SET', row, ARGV[i], 'EX', ttl) else redis.call('SET', row, ARGV[i]) end
    else
      if action == 'hset' then redis.call('DEL', row) end
      local n = tonumber(ARGV[i])
      i = i + 1
      local stop = i + 2 * n
      while i < stop do
        redis.call('HSET', row, ARGV[i], ARGV[i + 1])
        i = i + 2
      end
      while i <= last do
        redis.call('HDEL', row, ARGV[i])
        i = i + 1
      end
      if ttl > 0 then redis.call('EXPIRE', row, ttl) end
    end
  end
end
for ids, m in pairs(maxes) do
  if m and m ~= '' then redis.call('HSET', ids, '\0max', m) end
end
return incomplete
"#;

/// KEYS[1] the table's id hash; ARGV[1] the truncate's id. Deletes every key the hash
/// names, then keeps only the truncate mark.
pub(super) const TRUNCATE: &str = r#"
local t = redis.call('HGET', KEYS[1], '\0truncated')
if t and t >= ARGV[1] then return 0 end
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  if k ~= '\0truncated' then redis.call('DEL', k) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '\0truncated', ARGV[1], '\0max', ARGV[1])
return 1
"#;

/// Writes gathered for one call of [`WRITE`].
#[derive(Default)]
pub(super) struct Pending {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Where the current write's argument count goes.
    count_at: usize,
}

impl Pending {
    pub fn begin(&mut self, row: &str, ids: &str, id: &str, action: &str, ttl: u64) {
        self.keys.push(row.to_owned());
        self.keys.push(ids.to_owned());
        self.count_at = self.args.len();
        self.args.push(Vec::new());
        self.args.push(id.as_bytes().to_vec());
        self.args.push(action.as_bytes().to_vec());
        self.args.push(ttl.to_string().into_bytes());
    }

    pub fn arg(&mut self, a: impl Into<Vec<u8>>) {
        self.args.push(a.into());
    }

    pub fn end(&mut self) {
        let n = self.args.len() - self.count_at - 1;
        self.args[self.count_at] = n.to_string().into_bytes();
    }

    /// Removes the last (ended) write, to queue it again later with [`Self::put_back`].
    pub fn take_last(&mut self) -> (Vec<String>, Vec<Vec<u8>>) {
        let keys = self.keys.split_off(self.keys.len() - 2);
        let args = self.args.split_off(self.count_at);
        (keys, args)
    }

    pub fn put_back(&mut self, (keys, args): (Vec<String>, Vec<Vec<u8>>)) {
        self.keys.extend(keys);
        self.count_at = self.args.len();
        self.args.extend(args);
    }

    /// Moves the gathered writes into `pipe` as one call.
    pub fn flush(&mut self, script: &redis::Script, pipe: &mut redis::Pipeline) {
        if self.keys.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(self.keys.len());
        for k in self.keys.drain(..) {
            cmd.arg(k);
        }
        for a in self.args.drain(..) {
            cmd.arg(a);
        }
        pipe.add_command(cmd);
    }
}
