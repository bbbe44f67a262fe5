-- delete.lua: remove jobs that are scheduled, waiting to retry, dead or completed, with their
-- envelopes and status records, releasing a unique key a job still holds. (Pending jobs are removed with LREM, active ones by ending their
-- lease; see inspect.rs.)
--
-- KEYS[1] scheduled (zset)   KEYS[2] retry (zset)   KEYS[3] dead (zset)   KEYS[4] completed (zset)
-- KEYS[5] jobs (hash)
-- ARGV[1] key prefix "ostq:{<queue>}:", then job ids
-- Returns the number of jobs removed.
local prefix = ARGV[1]
-- @include lib/queue.lua
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local found = 0
  local tracked = false
  local env = redis.call('HGET', KEYS[5], id)
  if env then
    local ok, job = pcall(cmsgpack.unpack, env)
    if ok and type(job) == 'table' then
      release_unique(prefix, job[10], id)
      tracked = type(job[2]) == 'number' and job[2] % 2 == 1
    end
  end
  for k = 1, 3 do found = found + redis.call('ZREM', KEYS[k], id) end
  found = found + redis.call('HDEL', KEYS[5], id)
  -- A completed entry is a tracked job whose record is all that is left of it.
  if redis.call('ZREM', KEYS[4], id) == 1 then found, tracked = found + 1, true end
  if found > 0 then
    -- Only the record of a tracked job found here: an active job's record belongs to its worker
    -- until it finishes, and a pending job with the same id may own it.
    if tracked then redis.call('DEL', prefix .. 'job:' .. id, prefix .. 'done:' .. id) end
    removed = removed + 1
  end
end
return removed
