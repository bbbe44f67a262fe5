-- enqueue_now.lua: an operator (or code) wants jobs that are scheduled, waiting to retry, or dead
-- to run now. Each moves to the head of `pending` (or to `prioritized`); a dead job starts over
-- with a fresh attempt count and keeps its last error for reference.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] scheduled (zset)   KEYS[4] retry (zset)
-- KEYS[5] dead (zset)      KEYS[6] jobs (hash)          KEYS[7] seq (counter)
-- ARGV[1] key prefix "ostq:{<queue>}:", then job ids
-- Returns the number of jobs moved.
local PRIO = 4398046511104
local prefix = ARGV[1]
local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local env = redis.call('HGET', KEYS[6], id)
  local from = nil
  for _, zkey in ipairs({KEYS[3], KEYS[4], KEYS[5]}) do
    if redis.call('ZREM', zkey, id) == 1 then from = zkey end
  end
  if env and from then
    redis.call('HDEL', KEYS[6], id)
    local priority = 0
    local ok, job = pcall(cmsgpack.unpack, env)
    if ok and type(job) == 'table' and #job >= 9 then
      priority = tonumber(job[7]) or 0
      if from == KEYS[5] then
        job[5] = 0
        env = cmsgpack.pack(job)
      end
      if (tonumber(job[2]) or 0) % 2 == 1 then
        local rec = prefix .. 'job:' .. id
        redis.call('HSET', rec, 'state', 'pending', 'attempt', job[5])
        redis.call('HDEL', rec, 'finished_at')
        -- A dead job's "finished" token would wake waiters for the run that is starting now.
        redis.call('DEL', prefix .. 'done:' .. id)
      end
    end
    if priority ~= 0 then
      local seq = redis.call('INCR', KEYS[7]) % PRIO
      redis.call('ZADD', KEYS[2], -priority * PRIO + seq, env)
    else
      redis.call('RPUSH', KEYS[1], env)
    end
    moved = moved + 1
  end
end
return moved
