-- cron_fire.lua: enqueue the job of one schedule tick, exactly once however many scheduler
-- processes call it for the same tick. Every process calls it at each tick time T; the first
-- call with T greater than the schedule's last_tick wins and pushes the job, later calls for T
-- (or for any earlier tick) change nothing. No per-tick keys: last_tick survives restarts.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] schedules (hash)
-- KEYS[4] the schedule's state (hash, <prefix>cron:<name>)   KEYS[5] seq (counter)
-- KEYS[6] the job's status record (<prefix>job:<id>; written only for tracked jobs)
-- KEYS[7] removed schedules (hash: name -> removed at, <prefix>schedules:removed)
-- KEYS[8] config (hash)   KEYS[9] events (stream; also the pub/sub channel name): optional, for
--         the `pushed` event
-- ARGV[1] schedule name   ARGV[2] spec JSON (must equal the registry entry)
-- ARGV[3] tick T, unix ms   ARGV[4] the tick after T, unix ms (shown by inspection)
-- ARGV[5] job id   ARGV[6] payload   ARGV[7] task name ("" = none)   ARGV[8] max attempts
-- ARGV[9] priority   ARGV[10] flags (1 = keep a status record)
-- ARGV[11] key prefix "ostq:{<queue>}:" (optional, with KEYS[8] and KEYS[9]: names the queue in
--          the `pushed` event)
-- Returns {outcome, server time ms} where outcome is
--   'fired'      this call won the tick and pushed the job
--   'taken'      the tick (or a later one) was already fired
--   'early'      T is before the schedule was first registered (a catch-up that did not miss)
--   'removed'    the schedule was removed (cron_remove.lua)
--   'superseded' the registry holds another spec for this name
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua

-- Checked before any write (the same limits as push.lua).
-- @include lib/args.lua
local tick = argv_int(3, 0, MAX_ARG)
argv_int(4, 0, MAX_ARG)
local max_attempts = argv_int(8, 0, 4294967295)
local priority = argv_int(9, -1000, 1000)
local flags = argv_int(10, 0, 127)
if ARGV[5] == '' or #ARGV[5] > 255 then error('ostq: cron_fire.lua: the job id must be 1..255 bytes') end
local spec = redis.call('HGET', KEYS[3], ARGV[1])
if not spec then
  if redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1 then return {'removed', now} end
  -- Neither registered nor removed: the data was lost (a restart without persistence, a
  -- flush). Register again, as of this tick, and carry on.
  spec = ARGV[2]
  redis.call('HSET', KEYS[3], ARGV[1], spec)
  redis.call('HSETNX', KEYS[4], 'created', tick)
end
if spec ~= ARGV[2] then return {'superseded', now} end

local state = redis.call('HMGET', KEYS[4], 'last_tick', 'created')
local last = tonumber(state[1]) or 0
local created = tonumber(state[2]) or 0
if tick <= last then return {'taken', now} end
if tick < created then return {'early', now} end

local id, payload, name = ARGV[5], ARGV[6], ARGV[7]
redis.call('HSET', KEYS[4], 'last_tick', tick, 'next_tick', ARGV[4], 'last_job', id)
redis.call('HINCRBY', KEYS[4], 'fired', 1)

local env = new_envelope(id, flags, payload, name, max_attempts, priority, now)
route({pending = KEYS[1], prioritized = KEYS[2], seq = KEYS[5]}, env, priority, false)
if flags % 2 == 1 then
  redis.call('DEL', KEYS[6])
  redis.call('HSET', KEYS[6], 'state', 'pending', 'attempt', 0, 'enqueued_at', now, 'run_at', now)
end
local emit = event_emitter(KEYS[8], KEYS[9], ARGV[11] or '', now)
emit('pushed', id, {state = 'pending', schedule = ARGV[1]})
return {'fired', now}
