-- fetch.lua: lease up to N ready jobs to a worker as one lease group. On the way it promotes due
-- scheduled and retry jobs, recovers expired lease groups (their jobs go back to pending, or to
-- dead when attempts are spent) and trims the dead and completed sets, so no separate scheduler
-- or reaper process is needed.
--
-- A lease group is a LIST <prefix>lease:<g> holding the envelopes of one fetch, in order; job i of
-- the group is entry i. `active` scores each group by its deadline. Finished entries become ""
-- (a tombstone) and a finished group is deleted whole (complete.lua).
--
-- KEYS[1] pending (list)     KEYS[2] prioritized (zset)  KEYS[3] scheduled (zset)  KEYS[4] retry (zset)
-- KEYS[5] jobs (hash)        KEYS[6] active (zset)       KEYS[7] dead (zset)       KEYS[8] seq (counter)
-- KEYS[9] stats (hash)       KEYS[10] completed (zset)   KEYS[11] paused (string)
-- KEYS[12] rate limit (hash: max, period ms, tokens, ts): a token bucket shared by all workers
-- KEYS[13] config (hash)     KEYS[14] events (stream; also the pub/sub channel name)
-- KEYS[15] started (hash: lease group -> how many of its entries, from the first, have started;
--          no field = all of them): what recovery counts an attempt for
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] max jobs to lease (<= 1000)   ARGV[3] lease ms
-- ARGV[4] default max attempts           ARGV[5] dead set cap (entries)        ARGV[6] dead retention ms
-- ARGV[7] completed index retention ms
-- ARGV[8] lease group id for this fetch, drawn at random by the worker (not from a Redis counter:
--         after Redis loses its last writes, a counter would hand out ids still held by workers)
-- ARGV[9] (optional) how many of the leased jobs the worker starts at once; it parks the rest
--         (prefetch) and reports their starts through renew.lua. Absent: all start at once.
--         ("" = all, when ARGV[10] follows.)
-- ARGV[10], ARGV[11] (optional) a staged lease group id and its horizon in ms: when this call
--         leases nothing and the queue is neither on hold nor rate-limited, the group is
--         registered, empty, in `active` (deadline now + horizon) and in <prefix>staged, so that
--         the worker's idle wait can move the next job straight into it (BLMOVE pending
--         lease:<g> RIGHT LEFT; claim.lua then makes it an ordinary group; design §7.2).
-- Returns {now ms, next wake ms (0 = nothing timed), group (0 = nothing leased), hold, envelope1, ...}
-- where hold tells the worker how to wait: 1 = the queue is paused (wait for a resume), 2 = out of
-- rate-limit tokens (sleep until the wake time), 3 = the group of ARGV[10] is staged (wait by
-- moving into it), 0 = wait on the list.
local LIMIT = 1000
-- Work one call may do besides leasing (promotion and recovery share it), so that no call runs
-- long at any queue size: entries, and bytes of envelopes copied (at least one entry always moves).
local budget_entries, budget_bytes = 1000, 4194304
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
-- @include lib/args.lua
local want = math.min(argv_int(2, 0), LIMIT)
local lease_ms = argv_int(3, 1, 1e12)
local default_max = argv_int(4, 1, 4294967295)
local dead_max = argv_int(5, 0)
local dead_retention = argv_int(6, 0)
local completed_retention = argv_int(7, 0)
if not string.find(ARGV[8] or '', '^[1-9]%d*$') then error('ostq: fetch.lua ARGV[8] must be a lease group id') end
local start_now = (ARGV[9] and ARGV[9] ~= '') and argv_int(9, 0) or LIMIT
local stage, stage_ms = nil, nil
if ARGV[10] then
  if not string.find(ARGV[10], '^[1-9]%d*$') then error('ostq: fetch.lua ARGV[10] must be a lease group id') end
  stage, stage_ms = ARGV[10], argv_int(11, 1, 1e12)
end
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
-- @include lib/file.lua
-- @include lib/history.lua
-- @include lib/lease.lua
local emit, EVENTS = event_emitter(KEYS[13], KEYS[14], prefix, now)
local FILE_KEYS = {jobs = KEYS[5], prefix = prefix}
local QUEUE = {pending = KEYS[1], prioritized = KEYS[2], seq = KEYS[8]}

local function tracked(job) return job[2] % 2 == 1 end

-- Files an entry that is not a valid job in the dead set, with the reason.
local function bury_invalid(id, env, why)
  local reason = 'invalid job envelope: ' .. why
  local wrapped
  id, wrapped = wrap_invalid(id, env, why, now)
  id = file_job(FILE_KEYS, KEYS[7], now, id, wrapped, now)
  local rec = prefix .. 'job:' .. id
  if redis.call('EXISTS', rec) == 1 then
    redis.call('HSET', rec, 'state', 'dead', 'error', reason, 'finished_at', now)
  end
  emit('dead', id, {error = reason})
end

local function promote(zkey, kind)
  if budget_entries <= 0 or budget_bytes <= 0 then return end
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, budget_entries)
  if #ids == 0 then return end
  -- Sizes first (O(1) each), so a few huge envelopes are not all copied by one call.
  local take = {}
  for _, id in ipairs(ids) do
    if #take > 0 and budget_bytes <= 0 then break end
    take[#take + 1] = id
    budget_entries = budget_entries - 1
    budget_bytes = budget_bytes - redis.call('HSTRLEN', KEYS[5], id)
  end
  local envs = redis.call('HMGET', KEYS[5], unpack(take))
  redis.call('ZREM', zkey, unpack(take))
  local routed = {}
  for i, id in ipairs(take) do
    local env = envs[i]
    if env then
      local job, why = decode_job(env)
      if job then
        route(QUEUE, env, job[7], false)
        routed[#routed + 1] = id
        if tracked(job) then redis.call('HSET', prefix .. 'job:' .. id, 'state', 'pending') end
        if kind then emit(kind, id) end
      else
        redis.call('HDEL', KEYS[5], id) -- so that it is filed under its own id
        bury_invalid(id, env, why)
      end
    end
  end
  if #routed > 0 then redis.call('HDEL', KEYS[5], unpack(routed)) end
end

-- The error a job recovered before it started carries. A job recovered a second time in a row
-- without a start mark gets its attempt counted after all: a job that kills its worker within
-- the instant between its start and the mark must still run out of attempts.
local UNSTARTED = 'lease expired before the job started: its worker was lost'

-- Expired lease groups: their unfinished jobs go back to the queue, attempt counted, or to the
-- dead set when that was their last attempt. Jobs the worker had parked and not started (at or
-- past the group's start mark in KEYS[15]) go back without counting an attempt. Entries are taken
-- from the group's tail (RPOP), a budget's worth per call: a group too big for one call is marked
-- with score 0 (renew.lua then tells its worker the lease is lost) and finished by the next calls.
local function recover()
  local groups = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 100)
  if #groups == 0 then return end
  -- What recovery adds to the history, per task: recovered, processed and failed (a lost
  -- attempt is a failed one), then retried or dead.
  local figures = {}
  local function count(job, figure)
    local name = job[4]
    if name == '' then name = '-' end
    local field = name .. '|' .. figure
    figures[field] = (figures[field] or 0) + 1
  end
  for _, group in ipairs(groups) do
    if budget_entries <= 0 or budget_bytes <= 0 then break end
    local key = prefix .. 'lease:' .. group
    local index = redis.call('LLEN', key)
    -- Entries at or past the mark were parked by the worker and never started.
    local mark = tonumber(redis.call('HGET', KEYS[15], group))
    local lost, ran = 0, 0
    -- A staged group recovered before it was claimed: its job was never counted as active.
    local counted = not unstage(prefix, group)
    local finished = false
    redis.call('ZADD', KEYS[6], 'XX', 0, group)
    while true do
      if budget_entries <= 0 or budget_bytes <= 0 then break end
      local env = redis.call('RPOP', key)
      if not env then finished = true; break end
      index = index - 1
      budget_entries = budget_entries - 1
      budget_bytes = budget_bytes - #env
      -- An entry of a staged group never claimed is as its wait moved it: the wake marker (no
      -- job: dropped), a bare entry or a bin payload, made a job here as claim.lua would have.
      if env ~= '' and not counted then env = lease_entry(env, group, index, prefix, now, emit, false) or '' end
      if env ~= '' then
        lost = lost + 1
        local job, why = decode_job(env)
        if job and mark and index >= mark and job[9] ~= UNSTARTED then
          -- Never started: back to the head of the queue, attempt not counted.
          job[9] = UNSTARTED
          env = cmsgpack.pack(job)
          local id = job[1]
          count(job, 'recovered')
          route(QUEUE, env, job[7], true)
          emit('recovered', id, {attempt = job[5], error = UNSTARTED})
          if tracked(job) then
            redis.call('HSET', prefix .. 'job:' .. id, 'state', 'pending', 'error', UNSTARTED)
          end
        elseif job then
          ran = ran + 1
          local attempt = math.min(job[5] + 1, 4294967295)
          local max = job[6]
          if max <= 0 then max = default_max end
          local err = 'lease expired: the worker running attempt ' .. attempt .. ' was lost'
          job[5], job[9] = attempt, err
          env = cmsgpack.pack(job)
          local id = job[1]
          local rec = prefix .. 'job:' .. id
          count(job, 'recovered'); count(job, 'processed'); count(job, 'failed')
          count(job, attempt >= max and 'dead' or 'retried')
          if attempt >= max then
            release_unique(prefix, job[10], id)
            id = file_job(FILE_KEYS, KEYS[7], now, id, env, now)
            emit('dead', id, {attempt = attempt, error = err})
            if tracked(job) then
              rec = prefix .. 'job:' .. id
              redis.call('HSET', rec, 'state', 'dead', 'attempt', attempt, 'error', err, 'finished_at', now)
              notify_done(prefix, id)
            end
          else
            route(QUEUE, env, job[7], true)
            emit('recovered', id, {attempt = attempt, error = err})
            if tracked(job) then redis.call('HSET', rec, 'state', 'pending', 'attempt', attempt, 'error', err) end
          end
        else
          ran = ran + 1
          -- Its attempts cannot be counted, and it may be what crashed its worker: it ends here.
          local off, id_len = header(env)
          local id = off and string.sub(env, off, off + id_len - 1) or ('~' .. group .. '.' .. index)
          bury_invalid(id, env, why .. ' (found in an expired lease)')
        end
      end
    end
    if finished then
      redis.call('ZREM', KEYS[6], group)
      if mark then redis.call('HDEL', KEYS[15], group) end
    end
    if lost > 0 then
      if counted then redis.call('HINCRBY', KEYS[9], 'active', -lost) end
      redis.call('HINCRBY', KEYS[9], 'recovered', lost)
    end
    if ran > 0 then
      -- (A job that never started was neither processed nor failed.)
      redis.call('HINCRBY', KEYS[9], 'processed', ran)
      redis.call('HINCRBY', KEYS[9], 'failed', ran)
    end
  end
  local flat = {}
  for field, n in pairs(figures) do flat[#flat + 1] = field; flat[#flat + 1] = n end
  history_add(prefix, now, flat)
end

local function drop_dead(ids)
  if #ids == 0 then return end
  -- (A dead job already released its unique key when it died.)
  redis.call('ZREM', KEYS[7], unpack(ids))
  redis.call('HDEL', KEYS[5], unpack(ids))
  for _, id in ipairs(ids) do redis.call('DEL', prefix .. 'job:' .. id) end
end

local function trim()
  drop_dead(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now - dead_retention, 'LIMIT', 0, LIMIT))
  local excess = redis.call('ZCARD', KEYS[7]) - dead_max
  if excess > 0 then drop_dead(redis.call('ZRANGE', KEYS[7], 0, math.min(excess, LIMIT) - 1)) end
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now - completed_retention)
end

recover()
promote(KEYS[3], nil)
promote(KEYS[4], 'retried')
trim()

local hold = 0
local hold_until = nil
if redis.call('EXISTS', KEYS[11]) == 1 then want, hold = 0, 1 end
local limit = redis.call('HMGET', KEYS[12], 'max', 'period', 'tokens', 'ts')
local rate_max, rate_period = tonumber(limit[1]), tonumber(limit[2])
local tokens = nil
local rate_limited = false
if want > 0 and rate_max and rate_max > 0 and rate_period and rate_period > 0 then
  tokens = tonumber(limit[3]) or rate_max
  tokens = math.min(rate_max, tokens + (now - (tonumber(limit[4]) or now)) * rate_max / rate_period)
  if math.floor(tokens) < want then
    want = math.floor(tokens)
    rate_limited = true
  end
end
local popped = {}
local function take_prioritized(min, max, limit)
  local envs = redis.call('ZRANGEBYSCORE', KEYS[2], min, max, 'LIMIT', 0, limit)
  if #envs == 0 then return end
  redis.call('ZREM', KEYS[2], unpack(envs))
  for _, env in ipairs(envs) do popped[#popped + 1] = env end
end
local has_prioritized = want > 0 and redis.call('ZCARD', KEYS[2]) > 0
if has_prioritized then take_prioritized('-inf', '(0', want) end
-- A wake marker takes no slot: when one comes up, it is dropped and one more entry is taken.
-- (Several may stand in the list: a pause or a rate limit adds one per staged group, design §7.2.
-- Each round pops at least one entry, so this ends within the list's length and LIMIT rounds.)
for _ = 1, LIMIT do
  if #popped >= want then break end
  local envs = redis.call('RPOP', KEYS[1], want - #popped)
  if not envs then break end
  local marker = false
  for _, env in ipairs(envs) do
    if env == WAKE then marker = true else popped[#popped + 1] = env end
  end
  if not marker then break end
end
if has_prioritized and #popped < want then take_prioritized('0', '+inf', want - #popped) end

local result = {now, 0, 0, 0}
local n = 4 -- entries in result; the leased envelopes follow the 4-field header
if #popped > 0 then
  local group = ARGV[8]
  n = lease_entries(popped, group, prefix, now, emit, EVENTS ~= '', result, n, 4)
  if n > 4 then
    redis.call('RPUSH', prefix .. 'lease:' .. group, unpack(result, 5, n))
    -- Idle workers wait until the earliest lease deadline they saw at their last fetch, to
    -- recover it when it expires. A group due before every other (the first one, or one with a
    -- shorter lease) is a deadline they have not seen: wake them so they fetch and see it.
    local earliest = first_score(KEYS[6])
    if earliest == nil or now + lease_ms < earliest then wake(KEYS[1]) end
    redis.call('ZADD', KEYS[6], now + lease_ms, group)
    if start_now < n - 4 then redis.call('HSET', KEYS[15], group, start_now) end
    redis.call('HINCRBY', KEYS[9], 'active', n - 4)
    result[3] = group
  end
end
if tokens then
  tokens = tokens - #popped
  redis.call('HSET', KEYS[12], 'tokens', tostring(tokens), 'ts', now)
  -- Out of tokens with jobs still waiting: sleep until the next token instead of waiting on a
  -- list that is not empty. (With the queue drained, wait on the list as usual.)
  if rate_limited and #popped >= want then
    hold = 2
    hold_until = now + math.ceil((1 - (tokens - math.floor(tokens))) * rate_period / rate_max)
  end
end

-- Nothing to lease and nothing holding the queue: stage the worker's group for its idle wait.
-- (A rate-limited queue is not staged: a job moved by the wait would take no token.)
if stage and n == 4 and want > 0 and hold == 0 and not (rate_max and rate_max > 0) then
  redis.call('ZADD', KEYS[6], now + stage_ms, stage)
  redis.call('SADD', prefix .. 'staged', stage)
  hold = 3
end

local wake_at = nil
for _, zkey in ipairs({KEYS[3], KEYS[4], KEYS[6]}) do
  local s = first_score(zkey)
  -- (A group being recovered has score 0; 0 in the reply means "nothing timed".)
  if s and s < 1 then s = 1 end
  if s and (wake_at == nil or s < wake_at) then wake_at = s end
end
if hold_until and (wake_at == nil or hold_until < wake_at) then wake_at = hold_until end
result[2] = wake_at or 0
result[4] = hold
return result
