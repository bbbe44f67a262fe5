-- lib/file.lua: filing a job under its id in `retry` or `dead`. (Needs lib/envelope.lua.)
--
-- The jobs hash holds one envelope per id, and every member of `scheduled`, `retry` and `dead`
-- has its envelope there: two jobs under one id would share (and lose) one envelope. push.lua
-- refuses an id that names a waiting job; but two untracked jobs pushed with the same id while
-- the first was pending or running cannot be told apart until one of them is filed here. When
-- the id is taken, the job is filed under a fresh id "<id>~<n>" instead: its envelope is
-- rewritten to match, its status record (if tracked) is renamed and a unique key it holds is
-- pointed at the new id, so neither job is lost and nothing of either is left behind.
-- Returns the id the job was filed under.
--
-- keys: {jobs = <the jobs hash>, prefix = <the queue prefix>}; target is the retry or dead zset.
local function file_job(keys, target, score, id, env, now)
  if redis.call('HEXISTS', keys.jobs, id) == 1 then
    -- (A long id would make the fresh one longer than an id may be: then a generated base.)
    local base = #id <= 200 and id or ('~clash.' .. now)
    local fresh = nil
    for n = 1, 1000 do
      -- Free in the jobs hash, and no status record: a tracked job under that id may be pending
      -- or running (not in the jobs hash), and renaming this job's record onto it would
      -- overwrite that job's record.
      local candidate = base .. '~' .. n
      if redis.call('HEXISTS', keys.jobs, candidate) == 0
          and redis.call('EXISTS', keys.prefix .. 'job:' .. candidate) == 0 then
        fresh = candidate
        break
      end
    end
    fresh = fresh or ('~clash.' .. now .. '.' .. redis.call('TIME')[2])
    local job, why = decode_job(env)
    if job then
      job[1] = fresh
      env = cmsgpack.pack(job)
      local rec = keys.prefix .. 'job:' .. id
      if job[2] % 2 == 1 and redis.call('EXISTS', rec) == 1 then
        redis.call('RENAME', rec, keys.prefix .. 'job:' .. fresh)
      end
      if type(job[10]) == 'string' and job[10] ~= '' then
        local ukey = keys.prefix .. 'unique:' .. job[10]
        if redis.call('GET', ukey) == id then redis.call('SET', ukey, fresh, 'KEEPTTL') end
      end
      id = fresh
    else
      id, env = wrap_invalid(fresh, env, why, now)
    end
  end
  redis.call('ZADD', target, score, id)
  redis.call('HSET', keys.jobs, id, env)
  return id
end
