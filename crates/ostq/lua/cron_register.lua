-- cron_register.lua: record a schedule in the queue's registry, so that inspection lists it and
-- cron_fire.lua accepts ticks for it. Every scheduler process runs this at start with the same
-- registration; the last writer's spec wins (processes with another spec stand by). Registering
-- undoes a removal.
--
-- KEYS[1] schedules (hash: name -> spec JSON)
-- KEYS[2] the schedule's state (hash, <prefix>cron:<name>)
-- KEYS[3] removed schedules (hash: name -> removed at, <prefix>schedules:removed)
-- ARGV[1] schedule name   ARGV[2] spec JSON   ARGV[3] next tick, unix ms
-- The state hash holds: created (unix ms of the first registration: a catch-up never fires a tick
-- from before it), last_tick, next_tick, last_job, fired (count).
-- Returns {server time ms, 1 if the spec was new or changed else 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed = 0
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  changed = 1
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSETNX', KEYS[2], 'created', now)
local last = tonumber(redis.call('HGET', KEYS[2], 'last_tick') or '0') or 0
local nxt = tonumber(ARGV[3]) or 0
if nxt > last then redis.call('HSET', KEYS[2], 'next_tick', nxt) end
return {now, changed}
