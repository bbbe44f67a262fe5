-- push.lua: enqueue jobs given as plain fields; the envelope is built here, so any language (or
-- redis-cli) can enqueue with one EVAL. Immediate jobs go to `pending` (or `prioritized` when their
-- priority is not 0), delayed ones to `scheduled`. Tracked jobs (flags bit 0) get a status record.
-- A job with a unique key is not enqueued while another job holding that key is pending,
-- scheduled, waiting to retry or running: the caller gets the holder's id back instead.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] scheduled (zset)
-- KEYS[4] jobs (hash)      KEYS[5] seq (counter)
-- KEYS[6] config (hash)    KEYS[7] events (stream; also the pub/sub channel name): optional
-- ARGV[1] key prefix of the queue, "ostq:{<queue>}:" (status records are <prefix>job:<id>,
--         unique keys <prefix>unique:<key>)
-- then 10 fields per job:
--   id ("" = generate "~<n>"), payload, task name ("" = none), max attempts (0 = worker default),
--   priority (-1000..1000, higher runs first), delay ms (0 = none), run-at unix ms (0 = none),
--   flags (1 = keep a status record), unique key ("" = none),
--   unique ttl ms (0 = the key is held until the job completes or dies; > 0 = it expires then)
-- and, optionally, after the last job's fields, the W3C trace context of the span that pushes:
--   a traceparent, then optionally a tracestate. Every job of the call carries them (in its
--   envelope's 11th and 12th fields), and the worker's span for the job continues that trace.
--   The traceparent must be a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>", lowercase, ids
--   not all zeros; a later version may append "-..."), the tracestate at most 512 printable
--   ASCII characters ("" = none). A call without them (exactly 10 fields per job) is unchanged.
-- Numbers are decimal integers ("" counts as 0); anything else (NaN, inf, 1.5, 0x10, out of
-- range) is an error reply, and so is a bad id, name or field count: nothing of the call is
-- written then. Limits: id and unique key at most 200 bytes; priority -1000..1000; max attempts
-- 0..4294967295; flags 0..127; delay, run-at and unique ttl 0..10^14-1 ms; id, name and unique key
-- UTF-8 (the worker reads them as text).
-- Ids starting with "~" are generated (here "~<n>", by fetch.lua "~<group>.<index>"), so a given
-- id may not start with one.
-- An id names one job at a time. A given id that names a job still waiting (scheduled, waiting
-- to retry, or pending or running while tracked) is refused for that job; an id whose job is
-- dead takes that dead entry's place.
-- Returns one {id, created, why} triple per job, in order: created is 1 (why ""), or 0 when the
-- job was not enqueued: why is "unique" (id is the job holding the unique key) or the state of
-- the job that already has this id ("scheduled", "retry", "pending" or "active").
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
-- @include lib/args.lua
local emit = event_emitter(KEYS[6], KEYS[7], prefix, now)
local QUEUE = {pending = KEYS[1], prioritized = KEYS[2], seq = KEYS[5]}

-- Check every job before writing any, so a bad batch writes nothing.
local function int_arg(i, what, lo, hi)
  local v = ARGV[i]
  if v == '' then return 0 end
  local n = parse_int(v, lo, hi)
  if not n then
    error({err = 'ERR ostq: job ' .. math.floor((i - 2) / 10 + 1) .. ': ' .. what .. ' ' ..
      quoted_arg(v, 40) .. ' is not an integer in ' .. lo .. '..' .. hi})
  end
  return n
end
local MAX_MS = MAX_ARG -- 10^14 - 1 ms: about 3,170 years
-- Whether s is a W3C traceparent, for the trace argument (the same check as is_traceparent in
-- otel.rs): "vv-<32>-<16>-<2>" in lowercase hex, version not ff, ids not all zeros; version 00
-- has exactly these four parts, a later one may append "-" and more; printable ASCII, at most
-- 512 bytes.
local HEX32 = string.rep('[0-9a-f]', 32)
local HEX16 = string.rep('[0-9a-f]', 16)
local TRACEPARENT = '^[0-9a-f][0-9a-f]%-' .. HEX32 .. '%-' .. HEX16 .. '%-[0-9a-f][0-9a-f]'
local function is_traceparent(s)
  if type(s) ~= 'string' or #s < 55 or #s > MAX_TRACE or string.find(s, '[^\32-\126]') then return false end
  if not string.find(s, TRACEPARENT) then return false end
  local version = string.sub(s, 1, 2)
  if version == 'ff' or string.find(string.sub(s, 4, 35), '^0+$') or string.find(string.sub(s, 37, 52), '^0+$') then
    return false
  end
  if #s == 55 then return true end
  return version ~= '00' and string.sub(s, 56, 56) == '-'
end

-- Whether s can be a tracestate push.lua takes: printable ASCII, at most 512 bytes ('' = none).
local function is_tracestate(s)
  return type(s) == 'string' and #s <= MAX_TRACE and not string.find(s, '[^\32-\126]')
end

-- The trace arguments after the jobs' fields (0, 1 or 2 of them), and where the jobs' end.
local EXTRA = (#ARGV - 1) % 10
local LAST = #ARGV - EXTRA
local traceparent, tracestate = ARGV[LAST + 1], ARGV[LAST + 2]
-- The numbers of each job, by the index of its first field, as checked.
local numbers = {}
local function check_all()
  if EXTRA > 2 or LAST < 11 then
    error({err = 'ERR ostq: push.lua takes the prefix, then 10 fields per job, then optionally a traceparent and a tracestate'})
  end
  if traceparent ~= nil and not is_traceparent(traceparent) then
    error({err = 'ERR ostq: the argument after the jobs ' .. quoted_arg(traceparent, 80) .. ' is not a W3C traceparent'})
  end
  if tracestate ~= nil and not is_tracestate(tracestate) then
    error({err = 'ERR ostq: the tracestate must be at most 512 printable ASCII characters'})
  end
  for i = 2, LAST, 10 do
    local job = math.floor((i - 2) / 10 + 1)
    if #ARGV[i] > 200 then error({err = 'ERR ostq: job ' .. job .. ': job id longer than 200 bytes'}) end
    if string.sub(ARGV[i], 1, 1) == '~' then
      error({err = 'ERR ostq: job ' .. job .. ': ids starting with ~ are reserved for generated ones'})
    end
    if not is_utf8(ARGV[i]) then error({err = 'ERR ostq: job ' .. job .. ': job id is not UTF-8'}) end
    if not is_utf8(ARGV[i + 2]) then error({err = 'ERR ostq: job ' .. job .. ': task name is not UTF-8'}) end
    local n = {}
    n.max_attempts = int_arg(i + 3, 'max attempts', 0, 4294967295)
    n.priority = int_arg(i + 4, 'priority', -1000, 1000)
    n.delay = int_arg(i + 5, 'delay ms', 0, MAX_MS)
    n.run_at = int_arg(i + 6, 'run-at ms', 0, MAX_MS)
    n.flags = int_arg(i + 7, 'flags', 0, 127)
    if #ARGV[i + 8] > 200 then error({err = 'ERR ostq: job ' .. job .. ': unique key longer than 200 bytes'}) end
    if not is_utf8(ARGV[i + 8]) then error({err = 'ERR ostq: job ' .. job .. ': unique key is not UTF-8'}) end
    n.unique_ttl = int_arg(i + 9, 'unique ttl ms', 0, MAX_MS)
    numbers[i] = n
  end
end
local ok, bad = pcall(check_all)
if not ok then
  if type(bad) == 'table' then return redis.error_reply(bad.err) end
  return redis.error_reply('ERR ostq: ' .. tostring(bad))
end

-- What already has this id: a waiting job ("pending" or "active" by its tracked record,
-- "scheduled", "retry"), a "dead" job (whose entry a new job may take over), or nothing ("").
local RETRY, DEAD, COMPLETED = prefix .. 'retry', prefix .. 'dead', prefix .. 'completed'
local function id_state(id)
  local state = redis.call('HGET', prefix .. 'job:' .. id, 'state')
  if state == 'pending' or state == 'active' then return state end
  if redis.call('HEXISTS', KEYS[4], id) == 1 then
    if redis.call('ZSCORE', KEYS[3], id) then return 'scheduled' end
    if redis.call('ZSCORE', RETRY, id) then return 'retry' end
    if redis.call('ZSCORE', DEAD, id) then return 'dead' end
  end
  return ''
end
-- A new job takes the id over: the dead entry with it (and its record) goes, and so does a
-- completed job's index entry, which would otherwise point at the new job's record. Called after
-- the new job's own writes: Redis checks memory in a script only at its first write, and only
-- for commands that may grow memory (ZREM does not), so a push must start with one that does, or
-- it would go through when Redis is out of memory.
local function take_over(id, was_dead, scheduled)
  if was_dead then
    redis.call('ZREM', DEAD, id)
    -- (A scheduled job's envelope has just replaced the dead one's under the same id.)
    if not scheduled then redis.call('HDEL', KEYS[4], id) end
    redis.call('DEL', prefix .. 'job:' .. id, prefix .. 'done:' .. id)
  end
  redis.call('ZREM', COMPLETED, id)
end

local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local earliest = tonumber(first[2])
local out = {}
for i = 2, LAST, 10 do
  local id, payload, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local n = numbers[i]
  local max_attempts, priority, flags = n.max_attempts, n.priority, n.flags
  local delay, run_at = n.delay, n.run_at
  local unique, unique_ttl = ARGV[i + 8], n.unique_ttl
  local given, taken, was_dead = id ~= '', '', false
  if given then
    taken = id_state(id)
    if taken == 'dead' then taken, was_dead = '', true end
  else
    id = '~' .. redis.call('INCR', KEYS[5])
  end
  local holder = nil
  if taken == '' and unique ~= '' then
    local ukey = prefix .. 'unique:' .. unique
    local won
    if unique_ttl > 0 then
      won = redis.call('SET', ukey, id, 'NX', 'PX', unique_ttl)
    else
      won = redis.call('SET', ukey, id, 'NX')
    end
    if not won then holder = redis.call('GET', ukey) end
  end
  if taken ~= '' then
    out[#out + 1] = {id, 0, taken}
  elseif holder then
    out[#out + 1] = {holder, 0, 'unique'}
  else
    -- A key with a ttl is not the job's to release.
    local env = new_envelope(id, flags, payload, name, max_attempts, priority, now,
      unique_ttl <= 0 and unique or nil, traceparent, tracestate)
    local due = 0
    if run_at > 0 then due = run_at elseif delay > 0 then due = now + delay end
    local state
    if due > now then
      state = 'scheduled'
      redis.call('ZADD', KEYS[3], due, id)
      redis.call('HSET', KEYS[4], id, env)
      if earliest == nil or due < earliest then earliest = due; wake(KEYS[1]) end
    else
      state = 'pending'
      route(QUEUE, env, priority, false)
    end
    if given then take_over(id, was_dead, state == 'scheduled') end
    if flags % 2 == 1 then
      local rec = prefix .. 'job:' .. id
      redis.call('DEL', rec, prefix .. 'done:' .. id)
      redis.call('HSET', rec, 'state', state, 'attempt', 0, 'enqueued_at', now, 'run_at', math.max(due, now))
    end
    emit('pushed', id, {state = state})
    out[#out + 1] = {id, 1, ''}
  end
end
return out
