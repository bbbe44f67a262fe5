-- cron_remove.lua: remove a schedule from the queue's registry with its state, and remember the
-- removal, so that processes still running the registration stop firing it (rather than taking
-- the missing entry for lost data and registering it again). A process that starts later with
-- the registration registers it again and clears the removal.
--
-- KEYS[1] schedules (hash)   KEYS[2] the schedule's state (hash, <prefix>cron:<name>)
-- KEYS[3] removed schedules (hash: name -> removed at unix ms, <prefix>schedules:removed)
-- ARGV[1] schedule name
-- Returns 1 if the schedule was registered, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], ARGV[1], now)
return removed
