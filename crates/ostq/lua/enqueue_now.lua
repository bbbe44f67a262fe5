-- enqueue_now.lua: an operator (or code) wants jobs that are scheduled, waiting to retry, or dead
-- to run now. Each moves to the head of `pending` (or to `prioritized`); a dead job starts over
-- with a fresh attempt count and keeps its last error for reference.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] scheduled (zset)   KEYS[4] retry (zset)
-- KEYS[5] dead (zset)      KEYS[6] jobs (hash)          KEYS[7] seq (counter)
-- KEYS[8] config (hash)    KEYS[9] events (stream; also the pub/sub channel name)
-- ARGV[1] key prefix "ostq:{<queue>}:", then job ids
-- Returns the number of jobs moved.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
-- @include lib/file.lua
local emit = event_emitter(KEYS[8], KEYS[9], prefix, now)
local QUEUE = {pending = KEYS[1], prioritized = KEYS[2], seq = KEYS[7]}
local FILE_KEYS = {jobs = KEYS[6], prefix = prefix}

local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local env = redis.call('HGET', KEYS[6], id)
  local from = {}
  for _, zkey in ipairs({KEYS[3], KEYS[4], KEYS[5]}) do
    if redis.call('ZSCORE', zkey, id) then from[#from + 1] = zkey end
  end
  if not env then
    -- A member without an envelope cannot run: drop it (nothing else refers to it).
    for _, zkey in ipairs(from) do redis.call('ZREM', zkey, id) end
  elseif #from > 0 then
    local src = from[#from]
    -- Decoded and checked before anything moves: a job that cannot run is not taken out of
    -- where it is, except to the dead set with the reason.
    local job, why = decode_job(env)
    if not job then
      -- (Already dead, say put there by hand: it is wrapped in place, so it shows the reason.)
      for _, zkey in ipairs(from) do redis.call('ZREM', zkey, id) end
      redis.call('HDEL', KEYS[6], id)
      local wid, wrapped = wrap_invalid(id, env, why, now)
      wid = file_job(FILE_KEYS, KEYS[5], now, wid, wrapped, now)
      emit('dead', wid, {error = 'invalid job envelope: ' .. why})
    else
      for _, zkey in ipairs(from) do redis.call('ZREM', zkey, id) end
      redis.call('HDEL', KEYS[6], id)
      local priority = job[7]
      if src == KEYS[5] then
        -- A dead job released its unique key when it died; it must not release the key of a
        -- newer job that took it since, so it runs again without one ("": no hole in the table).
        job[5] = 0
        if job[10] ~= nil then job[10] = '' end
        env = cmsgpack.pack(job)
      end
      if job[2] % 2 == 1 then
        local rec = prefix .. 'job:' .. id
        redis.call('HSET', rec, 'state', 'pending', 'attempt', job[5])
        redis.call('HDEL', rec, 'finished_at')
        -- A dead job's "finished" token would wake waiters for the run that is starting now.
        redis.call('DEL', prefix .. 'done:' .. id)
      end
      route(QUEUE, env, priority, true)
      emit('retried', id, {from = (src == KEYS[5]) and 'dead' or ((src == KEYS[4]) and 'retry' or 'scheduled')})
      moved = moved + 1
    end
  end
end
return moved
