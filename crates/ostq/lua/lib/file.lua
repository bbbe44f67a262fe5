-- lib/file.lua: filing a job under its id in `retry` or `dead`. (Needs lib/envelope.lua.)
--
-- The jobs hash holds one envelope per id, and every member of `scheduled`, `retry` and `dead`
-- has its envelope there: two jobs under one id would share (and lose) one envelope. push.lua
-- refuses an id that names a waiting job; but two untracked jobs pushed with the same id while
-- the first was pending or running cannot be told apart until one of them is filed here. So:
--   * the id is free: file the job under it;
--   * the id names a dead job: the newer job supersedes that dead entry (as a push of the same
--     id does);
--   * the id names a job still waiting (scheduled or retry): file this one under a fresh id
--     "<id>~<n>", its envelope rewritten to match, so neither job is lost.
-- Returns the id the job was filed under.
--
-- keys: {jobs = , scheduled = , retry = , dead = }; target is keys.retry or keys.dead.
local function file_job(keys, target, score, id, env, now)
  if redis.call('HEXISTS', keys.jobs, id) == 1 then
    if redis.call('ZSCORE', keys.dead, id) then
      redis.call('ZREM', keys.dead, id)
    elseif redis.call('ZSCORE', keys.scheduled, id) or redis.call('ZSCORE', keys.retry, id) then
      local fresh = nil
      for n = 1, 1000 do
        local candidate = id .. '~' .. n
        if redis.call('HEXISTS', keys.jobs, candidate) == 0 then
          fresh = candidate
          break
        end
      end
      fresh = fresh or (id .. '~' .. now)
      local job, why = decode_job(env)
      if job then
        job[1] = fresh
        env = cmsgpack.pack(job)
      else
        env = wrap_invalid(fresh, env, why, now)
      end
      id = fresh
    end
  end
  redis.call('ZADD', target, score, id)
  redis.call('HSET', keys.jobs, id, env)
  return id
end
