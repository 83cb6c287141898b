//! The Lua scripts that make every multi-key change atomic.
//!
//! Conventions shared by all scripts:
//! - `ARGV[1]` is the key prefix; key names are derived from it and the
//!   ids inside the script (which is why this store needs a standalone
//!   Redis, or a prefix with a hash tag such as `{koukan}:` on a cluster).
//! - Times come from the caller as milliseconds since the epoch (the
//!   precision every store keeps). Lua numbers are doubles, which hold
//!   them exactly; they are stored as the caller's strings, never
//!   re-formatted by Lua (whose number formatting switches to exponents).
//! - Every check that can refuse the call runs before the first write.
//!   Redis does not roll a script back, and for scripts without flags it
//!   checks maxmemory only at the script's first write: a refused call
//!   (typed error or `-OOM`) has therefore changed nothing.
//! - Expected refusals are error replies with our own codes, mapped to
//!   typed errors in Rust: `NOTFOUND <what>`, `LEASELOST <tx>`,
//!   `BLOBCONFLICT <blob> <reason>`, `EXISTS <what>`.
//! - `CANCELLED` is the final reason a cancellation records
//!   ([`FinalReason::DownstreamCancelled`]).
//! - Every write to a transaction goes through `bump`, which increments
//!   its version, stamps `updated` and PUBLISHes `<id> <version>` on
//!   `{prefix}tx-version` (what wakes `wait_version` waiters, in every
//!   replica); gc's deletion of one publishes `<id> deleted` there.

use redis::Script;

use crate::FinalReason;

/// Helpers prepended to every script.
const PRELUDE: &str = r#"
local P = ARGV[1]
local SCHEDULE = P .. 'schedule'
local LEASES = P .. 'leases'
local FINAL = P .. 'final'
local ORPHANS = P .. 'orphans'
local BLOBS = P .. 'blobs'
local function txkey(id) return P .. 'tx:' .. id end
local function blobkey(id) return P .. 'blob:' .. id end
local function bump(k, id, now_ms)
  local v = redis.call('HINCRBY', k, 'version', 1)
  redis.call('HSET', k, 'updated', now_ms)
  redis.call('PUBLISH', P .. 'tx-version', id .. ' ' .. v)
  return v
end
local function unlink_chunks(bk, len, cs)
  local chunks = math.ceil(tonumber(len) / tonumber(cs))
  for i = 0, chunks - 1 do redis.call('UNLINK', bk .. ':' .. i) end
end
-- A transaction of blob `body` has become final: one open transaction
-- less, and with none left the body's data goes now (prompt collection).
-- The blob hash stays, `collected`, until gc has deleted the transactions
-- referencing it. Blobs stored before open counts existed have no `open`
-- field: gc takes those, as before.
local function release_body(body, now_ms)
  local bk = blobkey(body)
  if redis.call('HEXISTS', bk, 'open') == 0 then return end
  if redis.call('HINCRBY', bk, 'open', -1) > 0 then return end
  local m = redis.call('HMGET', bk, 'len', 'cs')
  if m[1] then unlink_chunks(bk, m[1], m[2]) end
  redis.call('HSET', bk, 'collected', '1', 'upd_ms', now_ms)
  redis.call('SREM', BLOBS, body)
end
-- Moves a transaction to final: out of the schedule and the lease set,
-- into the gc index; releases its body.
local function finalize(k, id, reason, now_ms)
  redis.call('HSET', k, 'final', reason)
  redis.call('HDEL', k, 'owner', 'expires', 'next')
  redis.call('ZREM', SCHEDULE, id)
  redis.call('ZREM', LEASES, id)
  redis.call('ZADD', FINAL, now_ms, id)
  local body = redis.call('HGET', k, 'body')
  if body then release_body(body, now_ms) end
end
"#;

/// ARGV: prefix, blob, chunk size, now_ms.
const CREATE_BLOB: &str = r#"
local id = ARGV[2]
local k = blobkey(id)
if redis.call('EXISTS', k) == 1 then
  return redis.error_reply('ERR blob id ' .. id .. ' already exists')
end
redis.call('HSET', k, 'len', 0, 'final', '0', 'refs', 0, 'cs', ARGV[3], 'created_ms', ARGV[4],
  'upd_ms', ARGV[4])
redis.call('SADD', BLOBS, id)
redis.call('ZADD', ORPHANS, ARGV[4], id)
return 1
"#;

/// ARGV: prefix, blob, offset, data, last (0/1), now_ms.
/// Returns the new length.
const APPEND_BLOB: &str = r#"
local id = ARGV[2]
local k = blobkey(id)
local m = redis.call('HMGET', k, 'len', 'final', 'cs', 'refs', 'collected')
if not m[1] or m[5] then return redis.error_reply('NOTFOUND blob ' .. id) end
if m[2] == '1' then
  return redis.error_reply('BLOBCONFLICT ' .. id .. ' blob is finalized')
end
local len = tonumber(m[1])
local cs = tonumber(m[3])
if tonumber(ARGV[3]) ~= len then
  return redis.error_reply('BLOBCONFLICT ' .. id .. ' append at offset ' .. ARGV[3]
    .. ' but the blob length is ' .. m[1])
end
local data = ARGV[4]
local n = #data
local pos = 1
-- Fill the current last chunk, then open new ones: chunk i holds bytes
-- [i*cs, (i+1)*cs) of the blob. A chunk is rewritten whole (GET, SET)
-- rather than APPENDed to: APPEND leaves the value with room to grow
-- (up to twice its size), which a finished body would keep for good.
while pos <= n do
  local idx = math.floor(len / cs)
  local within = len % cs
  local take = math.min(cs - within, n - pos + 1)
  local piece = string.sub(data, pos, pos + take - 1)
  local ck = k .. ':' .. idx
  if within > 0 then piece = redis.call('GET', ck) .. piece end
  redis.call('SET', ck, piece)
  pos = pos + take
  len = len + take
end
redis.call('HSET', k, 'len', len, 'upd_ms', ARGV[6])
if ARGV[5] == '1' then redis.call('HSET', k, 'final', '1') end
-- An unreferenced blob still being written must not look old to gc.
if tonumber(m[4]) <= 0 then redis.call('ZADD', ORPHANS, ARGV[6], id) end
return len
"#;

/// ARGV: prefix, blob, offset, max. Returns the bytes (empty at or past
/// the end).
const READ_BLOB: &str = r#"
local id = ARGV[2]
local k = blobkey(id)
local m = redis.call('HMGET', k, 'len', 'cs', 'collected')
if not m[1] then return redis.error_reply('NOTFOUND blob ' .. id) end
if m[3] then return redis.error_reply('NOTFOUND blob ' .. id .. ' (collected)') end
local len = tonumber(m[1])
local cs = tonumber(m[2])
local off = tonumber(ARGV[3])
local left = math.min(tonumber(ARGV[4]), len - off)
local parts = {}
while left > 0 do
  local idx = math.floor(off / cs)
  local within = off % cs
  local take = math.min(cs - within, left)
  local s = redis.call('GETRANGE', k .. ':' .. idx, within, within + take - 1)
  if #s ~= take then
    return redis.error_reply('ERR blob ' .. id .. ': chunk ' .. idx .. ' is shorter than its length says')
  end
  parts[#parts + 1] = s
  off = off + take
  left = left - take
end
return table.concat(parts)
"#;

/// What the two creation scripts share. A new transaction's values are
/// `ARGV[a]` to `ARGV[a + CREATE_TXS_STRIDE - 1]`: id, body blob, tx json,
/// leased (0/1), owner, expires_ms, next_ms, attempts, responses json or
/// '', history line or ''.
const CREATE_FNS: &str = r#"
-- Why `body` cannot be a new transaction's (an error reply), or nil.
local function body_refusal(body)
  local bm = redis.call('HMGET', blobkey(body), 'final', 'collected')
  local fin = bm[1]
  if not fin or bm[2] then return redis.error_reply('NOTFOUND blob ' .. body) end
  if fin ~= '1' then
    return redis.error_reply('BLOBCONFLICT ' .. body .. ' transaction body is not finalized')
  end
  return nil
end
-- Writes the transaction whose values start at ARGV[a] (checked already).
local function insert_tx(a, now_ms)
  local id, body = ARGV[a], ARGV[a + 1]
  local k = txkey(id)
  local bk = blobkey(body)
  redis.call('HINCRBY', bk, 'refs', 1)
  redis.call('HINCRBY', bk, 'open', 1)
  redis.call('ZREM', ORPHANS, body)
  redis.call('HSET', k, 'id', id, 'tx', ARGV[a + 2], 'body', body, 'created', now_ms,
    'next', ARGV[a + 6], 'attempts', ARGV[a + 7], 'version', 0)
  if ARGV[a + 8] ~= '' then redis.call('HSET', k, 'responses', ARGV[a + 8]) end
  if ARGV[a + 9] ~= '' then redis.call('HSET', k, 'history', ARGV[a + 9]) end
  if ARGV[a + 3] == '1' then
    -- Leased at creation: the creating replica runs the next attempt now.
    redis.call('HSET', k, 'owner', ARGV[a + 4], 'expires', ARGV[a + 5])
    redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('ZADD', LEASES, ARGV[a + 5], id)
  else
    redis.call('ZADD', SCHEDULE, ARGV[a + 6], id)
  end
  bump(k, id, now_ms)
end
"#;

/// ARGV: prefix, now_ms, count, then per transaction
/// [`CREATE_TXS_STRIDE`] values (see [`CREATE_FNS`]).
///
/// All or nothing: every check runs before the first write. Idempotent,
/// so that a call whose reply was lost can be repeated: when the first id
/// exists already, the batch was applied by an earlier call (a script is
/// atomic, and ids are fresh random ones), and nothing is written again.
/// Returns 1 when it created the batch, 0 when it found it there.
const CREATE_TXS: &str = r#"
local now_ms = ARGV[2]
local n = tonumber(ARGV[3])
local S = 10
if redis.call('EXISTS', txkey(ARGV[4])) == 1 then
  for i = 0, n - 1 do
    if redis.call('EXISTS', txkey(ARGV[4 + i * S])) == 0 then
      return redis.error_reply('ERR transaction batch ' .. ARGV[4] .. ' is partly stored')
    end
  end
  return 0
end
for i = 0, n - 1 do
  local a = 4 + i * S
  local id, body = ARGV[a], ARGV[a + 1]
  local err = body_refusal(body)
  if err then return err end
  if redis.call('EXISTS', txkey(id)) == 1 then
    return redis.error_reply('ERR transaction id ' .. id .. ' already exists')
  end
end
for i = 0, n - 1 do
  insert_tx(4 + i * S, now_ms)
end
return 1
"#;

/// ARGV: prefix, now_ms, nonce, idempotency key ('' for none),
/// fingerprint, key expires_ms, key ttl_ms, then the transaction's
/// [`CREATE_TXS_STRIDE`] values (see [`CREATE_FNS`]).
/// Returns `{1, id}` when it created the transaction (or an earlier run
/// of the same call did), `{0, id, fingerprint}` when the key was in use.
///
/// Checks in the order of the trait's docs: key, id, body; all before the
/// first write. Idempotent like [`CREATE_TXS`], but the id may be the
/// caller's, so "it exists" does not mean "this call made it": the
/// transaction carries the call's random nonce, and only a transaction
/// with that nonce is taken for this call's own earlier run.
///
/// The key is `{prefix}idem:{key}`, a hash of `tx`, `fp` and `expires`,
/// with a Redis TTL ending at the expiry (as the caller's clock puts it:
/// relative, so that the two clocks need not agree) that deletes it by
/// itself. Reads check `expires` too, for the moment between. The
/// transaction records its key in `idem`, for gc and withdrawal.
const CREATE_WITH: &str = r#"
local now_ms = ARGV[2]
local nonce = ARGV[3]
local a = 8
local id = ARGV[a]
local k = txkey(id)
-- An earlier run of this very call, whose reply was lost, created it (and
-- its key, which would otherwise answer Existing now).
if redis.call('HGET', k, 'nonce') == nonce then return {1, id} end
local ik = nil
if ARGV[4] ~= '' then
  ik = P .. 'idem:' .. ARGV[4]
  local m = redis.call('HMGET', ik, 'tx', 'fp', 'expires')
  -- Past its expiry but not yet deleted by Redis: absent all the same.
  if m[1] and tonumber(m[3]) > tonumber(now_ms) then return {0, m[1], m[2]} end
end
if redis.call('EXISTS', k) == 1 then
  return redis.error_reply('EXISTS transaction ' .. id)
end
local err = body_refusal(ARGV[a + 1])
if err then return err end
insert_tx(a, now_ms)
-- A kept body: one open reference more, which no finish releases.
if ARGV[a + 10] == '1' then redis.call('HINCRBY', blobkey(ARGV[a + 1]), 'open', 1) end
redis.call('HSET', k, 'nonce', nonce)
-- A key expired already would count as absent at once: not kept.
if ik and tonumber(ARGV[7]) > 0 then
  redis.call('DEL', ik)
  redis.call('HSET', ik, 'tx', id, 'fp', ARGV[5], 'expires', ARGV[6])
  redis.call('PEXPIRE', ik, ARGV[7])
  redis.call('HSET', k, 'idem', ARGV[4])
end
return {1, id}
"#;

/// Values per transaction in a [`CREATE_TXS`] call.
pub(super) const CREATE_TXS_STRIDE: usize = 10;

/// ARGV: prefix, now_ms, owner, expires_ms, limit.
/// Returns one HGETALL array per claimed transaction.
const CLAIM_DUE: &str = r#"
local now_ms = ARGV[2]
local limit = tonumber(ARGV[5])
-- Candidates: due schedule entries and expired leases (expires <= now),
-- oldest first. Taking `limit` of each is enough to pick the `limit`
-- oldest overall.
local cands = {}
local due = redis.call('ZRANGEBYSCORE', SCHEDULE, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do cands[#cands + 1] = { due[i], tonumber(due[i + 1]), SCHEDULE } end
local exp = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #exp, 2 do cands[#cands + 1] = { exp[i], tonumber(exp[i + 1]), LEASES } end
table.sort(cands, function(a, b) return a[2] < b[2] end)
local out = {}
local seen = {}
for _, c in ipairs(cands) do
  if #out >= limit then break end
  local id = c[1]
  if not seen[id] then
    seen[id] = true
    local k = txkey(id)
    local m = redis.call('HMGET', k, 'id', 'final', 'cancelled')
    redis.call('ZREM', c[3], id)
    if not m[1] then
      -- Index entry without a record (cannot happen through this API):
      -- dropping it keeps the index clean.
    elseif m[2] then
      -- Already final: stale index entry.
    elseif m[3] then
      -- Cancelled while leased, and the holder's lease ran out before it
      -- finished: nobody runs it again.
      finalize(k, id, CANCELLED, now_ms)
      bump(k, id, now_ms)
    else
      redis.call('HSET', k, 'owner', ARGV[3], 'expires', ARGV[4])
      redis.call('HINCRBY', k, 'attempts', 1)
      redis.call('ZADD', LEASES, ARGV[4], id)
      bump(k, id, now_ms)
      out[#out + 1] = redis.call('HGETALL', k)
    end
  end
end
return out
"#;

/// ARGV: prefix, tx, owner, now_ms, expires_ms.
const RENEW_LEASE: &str = r#"
local id = ARGV[2]
local k = txkey(id)
local m = redis.call('HMGET', k, 'id', 'owner', 'final', 'cancelled')
if not m[1] then return redis.error_reply('NOTFOUND transaction ' .. id) end
-- Cancelled: the holder learns it here and must stop. Nothing changes:
-- it may still record its attempt with finish_attempt, and if it does not,
-- the first claim after the lease expires finalizes the transaction.
if m[2] ~= ARGV[3] or m[3] or m[4] then return redis.error_reply('LEASELOST ' .. id) end
redis.call('HSET', k, 'expires', ARGV[5])
redis.call('ZADD', LEASES, ARGV[5], id)
bump(k, id, ARGV[4])
return 1
"#;

/// ARGV: prefix, tx, owner, now_ms, responses json,
/// kind ('final' | 'retry'), reason | next_ms, attempted (0/1).
/// Returns the record's HGETALL array.
///
/// An attempted finish appends one line to `history`:
/// `{"attempt":N,"finished_ms":T,"responses":R}`; a settled one (not
/// attempted) takes back the claim's attempt count instead.
const FINISH_ATTEMPT: &str = r#"
local id = ARGV[2]
local k = txkey(id)
local m = redis.call('HMGET', k, 'id', 'owner', 'final', 'cancelled', 'attempts', 'history')
if not m[1] then return redis.error_reply('NOTFOUND transaction ' .. id) end
-- An expired lease that nobody took over is still ours: the outcome is
-- the only one there is.
if m[2] ~= ARGV[3] or m[3] then return redis.error_reply('LEASELOST ' .. id) end
local now_ms = ARGV[4]
if ARGV[8] == '1' then
  local line = '{"attempt":' .. m[5] .. ',"finished_ms":' .. now_ms .. ',"responses":' .. ARGV[5] .. '}\n'
  redis.call('HSET', k, 'responses', ARGV[5], 'history', (m[6] or '') .. line)
else
  redis.call('HINCRBY', k, 'attempts', -1)
end
if ARGV[6] == 'final' then
  finalize(k, id, ARGV[7], now_ms)
elseif m[4] then
  -- Cancelled during the attempt: no retry.
  finalize(k, id, CANCELLED, now_ms)
else
  redis.call('HDEL', k, 'owner', 'expires')
  redis.call('ZREM', LEASES, id)
  redis.call('HSET', k, 'next', ARGV[7])
  redis.call('ZADD', SCHEDULE, ARGV[7], id)
end
bump(k, id, now_ms)
return redis.call('HGETALL', k)
"#;

/// The cancellation [`CANCEL`] and [`WITHDRAW`] share.
const CANCEL_FN: &str = r#"
-- 0: final already (nothing changes); 1: finalized now; 2: leased, the
-- holder stops at its next renew or finish.
local function cancel_tx(id, now_ms)
  local k = txkey(id)
  local m = redis.call('HMGET', k, 'id', 'final', 'owner', 'expires', 'cancelled')
  if not m[1] then return redis.error_reply('NOTFOUND transaction ' .. id) end
  if m[2] then return 0 end
  local leased = m[3] and m[4] and tonumber(m[4]) > tonumber(now_ms)
  if leased and m[5] then return 2 end
  redis.call('HSET', k, 'cancelled', '1')
  if not leased then
    finalize(k, id, CANCELLED, now_ms)
  end
  bump(k, id, now_ms)
  if leased then return 2 end
  return 1
end
"#;

/// ARGV: prefix, tx, now_ms.
const CANCEL: &str = r#"
return cancel_tx(ARGV[2], ARGV[3])
"#;

/// ARGV: prefix, tx, now_ms, nonce. Withdraws a transaction that a
/// [`CREATE_WITH`] call with this nonce may have created (its caller was
/// told it failed): cancels it as [`CANCEL`] does, if that call created
/// it; -1 if not (the call never ran, or the id was someone else's, which
/// must not be touched). Once the cancel has finalized it, so that
/// nothing was delivered, its idempotency key goes too, so that the
/// client's retry creates the message anew instead of finding this
/// cancelled one. A transaction already running or final keeps its key:
/// it may have been delivered, and a retry must not deliver it again.
const WITHDRAW: &str = r#"
local id = ARGV[2]
local k = txkey(id)
if redis.call('HGET', k, 'nonce') ~= ARGV[4] then return -1 end
local r = cancel_tx(id, ARGV[3])
if r == 1 then
  local key = redis.call('HGET', k, 'idem')
  if key then
    local ik = P .. 'idem:' .. key
    if redis.call('HGET', ik, 'tx') == id then redis.call('DEL', ik) end
  end
end
return r
"#;

/// ARGV: prefix, replica, uri, ttl_ms (at least 1).
const REGISTER_REPLICA: &str = r#"
redis.call('SET', P .. 'replica:' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// ARGV: prefix, cutoff_ms, batch. Deletes up to `batch` final
/// transactions last updated before the cutoff; returns how many.
const GC_TXS: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', FINAL, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local k = txkey(id)
  local body = redis.call('HGET', k, 'body')
  -- Its idempotency key goes with it, unless the key expired and was
  -- used again since (then it points to another transaction).
  local key = redis.call('HGET', k, 'idem')
  if key then
    local ik = P .. 'idem:' .. key
    if redis.call('HGET', ik, 'tx') == id then redis.call('UNLINK', ik) end
  end
  redis.call('UNLINK', k)
  redis.call('ZREM', FINAL, id)
  -- Its waiters read again and learn that it is gone.
  redis.call('PUBLISH', P .. 'tx-version', id .. ' deleted')
  if body then
    local bk = blobkey(body)
    if redis.call('EXISTS', bk) == 1 then
      if redis.call('HINCRBY', bk, 'refs', -1) <= 0 then
        -- Unreferenced now; aged by its last write, so a body nobody
        -- touched since before the cutoff goes in this same gc run.
        redis.call('ZADD', ORPHANS, redis.call('HGET', bk, 'upd_ms'), body)
      end
    end
  end
end
return #ids
"#;

/// ARGV: prefix, cutoff_ms, batch. Deletes up to `batch` unreferenced
/// blobs last written before the cutoff; returns how many were examined.
const GC_BLOBS: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', ORPHANS, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local bk = blobkey(id)
  redis.call('ZREM', ORPHANS, id)
  local m = redis.call('HMGET', bk, 'len', 'cs', 'refs', 'collected')
  if m[1] and tonumber(m[3]) <= 0 then
    if not m[4] then unlink_chunks(bk, m[1], m[2]) end
    redis.call('UNLINK', bk)
    redis.call('SREM', BLOBS, id)
  elseif not m[1] then
    redis.call('SREM', BLOBS, id)
  end
end
return #ids
"#;

/// ARGV: prefix, blob. Deletes the blob and its chunks if no transaction
/// references it; returns 1 if it did, 0 otherwise (referenced, unknown).
const DELETE_BLOB: &str = r#"
local id = ARGV[2]
local bk = blobkey(id)
local m = redis.call('HMGET', bk, 'len', 'cs', 'refs')
if not m[1] or tonumber(m[3]) > 0 then return 0 end
unlink_chunks(bk, m[1], m[2])
redis.call('UNLINK', bk)
redis.call('SREM', BLOBS, id)
redis.call('ZREM', ORPHANS, id)
return 1
"#;

/// ARGV: prefix, now_ms. Returns {waiting, due, inflight, final, blobs}
/// (blobs: those still holding data, collected ones not counted).
const COUNTS: &str = r#"
local now_ms = ARGV[2]
-- An expired lease is waiting (and due) again, as TxRecord::state says.
local expired = redis.call('ZCOUNT', LEASES, '-inf', now_ms)
return {
  redis.call('ZCARD', SCHEDULE) + expired,
  redis.call('ZCOUNT', SCHEDULE, '-inf', now_ms) + expired,
  redis.call('ZCOUNT', LEASES, '(' .. now_ms, '+inf'),
  redis.call('ZCARD', FINAL),
  redis.call('SCARD', BLOBS),
}
"#;

/// The compiled scripts (each knows its SHA1; `invoke_async` falls back
/// to EVAL after a Redis restart flushed the script cache).
pub(super) struct Scripts {
    pub create_blob: Script,
    pub append_blob: Script,
    pub read_blob: Script,
    pub create_txs: Script,
    pub create_with: Script,
    pub withdraw: Script,
    pub register_replica: Script,
    pub claim_due: Script,
    pub renew_lease: Script,
    pub finish_attempt: Script,
    pub cancel: Script,
    pub gc_txs: Script,
    pub gc_blobs: Script,
    pub delete_blob: Script,
    pub counts: Script,
}

impl Scripts {
    /// With `allow_oom` (Redis 7.0 and later understand script flags),
    /// the scripts of delivery (claim, renew, finish, cancel, gc, blob
    /// deletion) run even when Redis is over `maxmemory`: they write a few
    /// bytes and free bodies, and refusing them would leave a full Redis
    /// unable to drain. Receiving new mail (blobs, appends, storing
    /// transactions) keeps Redis's check at the first write, so it is
    /// refused with `-OOM` there and changes nothing.
    pub fn new(allow_oom: bool) -> Self {
        // The reason a cancellation records, from the one definition of
        // it (a Lua string literal: it holds no quote or backslash).
        let cancelled = FinalReason::DownstreamCancelled.as_str();
        let prelude = format!("{PRELUDE}local CANCELLED = '{cancelled}'\n");
        let s = |body: &str| Script::new(&format!("{prelude}{body}"));
        let delivery = |body: &str| {
            if allow_oom {
                Script::new(&format!("#!lua flags=allow-oom\n{prelude}{body}"))
            } else {
                s(body)
            }
        };
        Scripts {
            create_blob: s(CREATE_BLOB),
            append_blob: s(APPEND_BLOB),
            read_blob: s(READ_BLOB),
            create_txs: s(&format!("{CREATE_FNS}{CREATE_TXS}")),
            create_with: s(&format!("{CREATE_FNS}{CREATE_WITH}")),
            withdraw: delivery(&format!("{CANCEL_FN}{WITHDRAW}")),
            // A replica must stay reachable while delivery drains a full
            // Redis, so registering is no new mail.
            register_replica: delivery(REGISTER_REPLICA),
            claim_due: delivery(CLAIM_DUE),
            renew_lease: delivery(RENEW_LEASE),
            finish_attempt: delivery(FINISH_ATTEMPT),
            cancel: delivery(&format!("{CANCEL_FN}{CANCEL}")),
            gc_txs: delivery(GC_TXS),
            gc_blobs: delivery(GC_BLOBS),
            delete_blob: delivery(DELETE_BLOB),
            counts: s(COUNTS),
        }
    }
}
