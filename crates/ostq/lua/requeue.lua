-- requeue.lua: a worker shutting down gives back jobs it leased but did not finish. They go to the
-- head of the queue at once (no wait for the lease to expire) and the attempt is not counted: the
-- job did not fail, the worker left.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] active (zset)   KEYS[4] inflight (hash)
-- KEYS[5] seq (counter)
-- ARGV[1] key prefix "ostq:{<queue>}:", then the leases to give back
-- Returns the number of jobs given back.
local PRIO = 4398046511104
local prefix = ARGV[1]
local returned = 0
for i = 2, #ARGV do
  local lease = ARGV[i]
  local env = redis.call('HGET', KEYS[4], lease)
  if redis.call('ZREM', KEYS[3], lease) == 1 and env then
    redis.call('HDEL', KEYS[4], lease)
    local ok, job = pcall(cmsgpack.unpack, env)
    local priority = 0
    if ok and type(job) == 'table' and #job >= 9 then
      priority = tonumber(job[7]) or 0
      if (tonumber(job[2]) or 0) % 2 == 1 then
        redis.call('HSET', prefix .. 'job:' .. job[1], 'state', 'pending')
      end
    end
    if priority ~= 0 then
      local seq = redis.call('INCR', KEYS[5]) % PRIO
      redis.call('ZADD', KEYS[2], -priority * PRIO + seq, env)
    else
      redis.call('RPUSH', KEYS[1], env)
    end
    returned = returned + 1
  end
end
return returned
