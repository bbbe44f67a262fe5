-- delete_pending.lua: remove one pending job (found by its exact envelope bytes), its status
-- record, and the unique key it holds if that still names it. A job fetched meanwhile is not
-- found and left alone.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] job id   ARGV[3] the job's envelope
-- Returns 1 if the job was removed, else 0.
local prefix, id, env = ARGV[1], ARGV[2], ARGV[3]
-- @include lib/queue.lua
local removed = redis.call('LREM', KEYS[1], 1, env) + redis.call('ZREM', KEYS[2], env)
if removed == 0 then return 0 end
local ok, job = pcall(cmsgpack.unpack, env)
if ok and type(job) == 'table' then release_unique(prefix, job[10], id) end
-- The record only if this job kept one: another job with the same id may own it.
if ok and type(job) == 'table' and type(job[2]) == 'number' and job[2] % 2 == 1 then
  redis.call('DEL', prefix .. 'job:' .. id, prefix .. 'done:' .. id)
end
return 1
