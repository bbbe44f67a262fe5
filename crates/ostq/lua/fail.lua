-- fail.lua: a worker's attempts at jobs failed; move each to `retry` (due after a backoff the
-- worker chose) or to `dead`, with the envelope the worker rewrote (attempt count, last error),
-- and tombstone its entry in the lease group. The group itself is deleted by complete.lua (sent
-- right after, with `all`), so a group whose last job failed is cleaned up too. Stale and repeated
-- calls are ignored, as in complete.lua.
--
-- KEYS[1] active (zset)   KEYS[2] retry (zset)   KEYS[3] dead (zset)       KEYS[4] jobs (hash)
-- KEYS[5] stats (hash)    KEYS[6] pending (list) KEYS[7] scheduled (zset)  KEYS[8] config (hash)
-- KEYS[9] events (stream; also the pub/sub channel name)
-- ARGV[1] key prefix "ostq:{<queue>}:"
-- then 10 fields per job: group, index, id, new envelope, "retry" or "dead", retry delay ms,
--   tracked ("1" or "0"), attempt number that failed, error text, unique key the job holds
--   ("" = none; released when the job dies, if it still names this job)
-- A tracked job that dies gets a token on <prefix>done:<id> (kept 60 s) for `wait_for` callers.
-- Returns the number of stale failures (ignored).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
-- @include lib/file.lua
local emit = event_emitter(KEYS[8], KEYS[9], prefix, now)
local FILE_KEYS = {jobs = KEYS[4], prefix = prefix}

-- Check the whole call before writing anything: a malformed call must not stop half-way.
-- @include lib/args.lua
if (#ARGV - 1) % 10 ~= 0 then return redis.error_reply('ERR ostq: fail.lua takes 10 fields per job') end
for i = 2, #ARGV, 10 do
  if ARGV[i] == '' or not parse_int(ARGV[i + 1]) or ARGV[i + 2] == ''
    or not (ARGV[i + 4] == 'retry' or ARGV[i + 4] == 'dead') or not parse_int(ARGV[i + 5])
    or not (ARGV[i + 6] == '0' or ARGV[i + 6] == '1') or not parse_int(ARGV[i + 7]) then
    return redis.error_reply('ERR ostq: fail.lua: malformed job at ARGV[' .. i .. ']')
  end
end

local earliest = first_score(KEYS[2])
local s = first_score(KEYS[7])
if s and (earliest == nil or s < earliest) then earliest = s end

local stale, failed, uncounted, wake_workers = 0, 0, 0, false
for i = 2, #ARGV, 10 do
  local group, index, id, env, target = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local err = ARGV[i + 8]
  local key = prefix .. 'lease:' .. group
  -- Stale when the group is gone or being recovered (score 0: recovery owns its entries).
  local held = (tonumber(redis.call('ZSCORE', KEYS[1], group)) or 0) > 0
  local entry = held and redis.call('LINDEX', key, index)
  if entry and entry ~= '' then
    redis.call('LSET', key, index, '')
    failed = failed + 1
    -- A staged group settled before claim.lua: its job was never counted as active, and its
    -- `started` event is due first.
    if unstage(prefix, group) then
      uncounted = uncounted + 1
      emit('started', id)
    end
    local job, why = decode_job(env)
    if not job then
      err = 'invalid job envelope: ' .. why
      id, env = wrap_invalid(id, env, why, now)
      target = 'dead'
    elseif job[9] == '' or err == '' then
      -- A failure always says something (a handler may fail with an empty message).
      if err == '' then err = job[9] ~= '' and job[9] or 'failed without an error message' end
      if job[9] == '' then
        job[9] = err
        env = cmsgpack.pack(job)
      end
    end
    local state
    if target == 'retry' then
      state = 'retry'
      local due = now + tonumber(ARGV[i + 5])
      id = file_job(FILE_KEYS, KEYS[2], due, id, env, now)
      if earliest == nil or due < earliest then earliest = due; wake_workers = true end
    else
      state = 'dead'
      release_unique(prefix, ARGV[i + 9], id)
      id = file_job(FILE_KEYS, KEYS[3], now, id, env, now)
    end
    if state == 'retry' then
      emit('failed', id, {attempt = tonumber(ARGV[i + 7]), error = err, retry_in_ms = tonumber(ARGV[i + 5])})
    else
      emit('dead', id, {attempt = tonumber(ARGV[i + 7]), error = err})
    end
    if ARGV[i + 6] == '1' then
      local rec = prefix .. 'job:' .. id
      redis.call('HSET', rec, 'state', state, 'attempt', ARGV[i + 7], 'error', err)
      redis.call('PERSIST', rec)
      if state == 'dead' then
        redis.call('HSET', rec, 'finished_at', now)
        notify_done(prefix, id)
      end
    end
  else
    stale = stale + 1
  end
end
if failed > 0 then
  redis.call('HINCRBY', KEYS[5], 'processed', failed)
  redis.call('HINCRBY', KEYS[5], 'failed', failed)
  if failed > uncounted then redis.call('HINCRBY', KEYS[5], 'active', uncounted - failed) end
end
-- Wake idle workers (blocked on the empty pending list) so they plan for the earlier retry.
if wake_workers then wake(KEYS[6]) end
return stale
