-- complete.lua: a worker finished jobs successfully. Per lease group it either deletes the whole
-- group (every job of it is done: one DEL, the common case) or tombstones the finished entries
-- (""), so a recovery after a crash re-runs only the unfinished ones. A group no longer in
-- `active` was recovered after its lease expired: those late acks are ignored, the jobs belong
-- to someone else now. Running it twice changes nothing (tombstones and deleted groups are
-- recognised).
--
-- KEYS[1] active (zset)   KEYS[2] completed (zset)   KEYS[3] stats (hash)
-- KEYS[4] config (hash)   KEYS[5] events (stream; also the pub/sub channel name)
-- KEYS[6] started (hash: lease group -> entries started; a deleted group's field goes with it)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] status record retention seconds
-- then per group: group, all ("1" when every job of the group is now done), k (jobs completed in
--   this call), d, and d times 5 fields for the jobs that need more than counting:
--   index in the group, job id, tracked ("1" or "0"), result ("" = none),
--   unique key the job holds ("" = none; released if it still names this job).
--   When `all` is "0" every completed job is detailed (d = k: its entry is tombstoned); when it
--   is "1" only tracked jobs and unique-key holders are (d <= k): the common case of plain jobs
--   finishing a group costs one DEL and no per-job argument at all.
-- A tracked job someone waits on (its record's `waited` field, set by wait.lua) also gets a token on
-- <prefix>done:<id> (kept 60 s) that wakes `wait_for` callers.
-- Returns the number of stale acks (ignored).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
local emit, EVENTS = event_emitter(KEYS[4], KEYS[5], prefix, now)
local function id_of(env)
  local off, id_len = header(env)
  return off and string.sub(env, off, off + id_len - 1) or '?'
end

-- @include lib/args.lua
-- Check the whole call before writing anything: a malformed call must not stop half-way.
if not parse_int(ARGV[2], 1, 1e12) then return redis.error_reply('ERR ostq: complete.lua ARGV[2] must be a positive integer') end
local i = 3
while i <= #ARGV do
  local k, d = parse_int(ARGV[i + 2]), parse_int(ARGV[i + 3])
  if ARGV[i] == '' or not (ARGV[i + 1] == '0' or ARGV[i + 1] == '1') or not k or not d then
    return redis.error_reply('ERR ostq: complete.lua: malformed group at ARGV[' .. i .. ']')
  end
  for j = i + 4, i + 4 + 5 * (d - 1), 5 do
    if not parse_int(ARGV[j]) or ARGV[j + 4] == nil then
      return redis.error_reply('ERR ostq: complete.lua: malformed job at ARGV[' .. j .. ']')
    end
  end
  i = i + 4 + 5 * d
end

local stale, done, uncounted = 0, 0, 0
-- Finished tracked jobs for the `completed` index: one ZADD per call, not one per job.
local indexed = {}
i = 3
while i <= #ARGV do
  local group, all, k, d = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + 5 * d
  local key = prefix .. 'lease:' .. group
  -- Held: in `active` with a deadline. Gone, or at score 0 (recovery has started on it and owns
  -- what is left: deleting the group now would drop entries recovery has not reached), is stale.
  if (tonumber(redis.call('ZSCORE', KEYS[1], group)) or 0) <= 0 then
    stale = stale + k
  else
    -- A staged group settled before claim.lua: its job was never counted as active.
    local counted = not unstage(prefix, group)
    if all then
      done = done + k
      if not counted then uncounted = uncounted + k end
      if EVENTS ~= '' then
        -- Everything of the group is settled: the entries left are the jobs completed now.
        for _, env in ipairs(redis.call('LRANGE', key, 0, -1)) do
          if env ~= '' then
            -- (A staged job that finished before its claim: its `started` is due first.)
            if not counted then emit('started', id_of(env)) end
            emit('completed', id_of(env))
          end
        end
      end
    end
    for j = first, first + 5 * (d - 1), 5 do
      local live = true
      if not all then
        local index = tonumber(ARGV[j])
        -- (nil: no such entry; a malformed index, say)
        local entry = redis.call('LINDEX', key, index)
        live = entry and entry ~= ''
        if live then redis.call('LSET', key, index, '') end
      end
      if live then
        local id, unique = ARGV[j + 1], ARGV[j + 4]
        if not all then
          done = done + 1
          if not counted then
            uncounted = uncounted + 1
            emit('started', id)
          end
          emit('completed', id)
        end
        release_unique(prefix, unique, id)
        if ARGV[j + 2] == '1' then
          local rec = prefix .. 'job:' .. id
          -- (state: the record exists, so no record is created for garbage; waited: wait.lua)
          local record = redis.call('HMGET', rec, 'state', 'waited')
          if record[1] then
            if ARGV[j + 3] ~= '' then
              redis.call('HSET', rec, 'state', 'completed', 'finished_at', now, 'result', ARGV[j + 3])
            else
              redis.call('HSET', rec, 'state', 'completed', 'finished_at', now)
            end
            redis.call('EXPIRE', rec, ttl)
            indexed[#indexed + 1] = now
            indexed[#indexed + 1] = id
            if record[2] then notify_done(prefix, id) end
          end
        end
      end
    end
    if all then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], group)
      redis.call('HDEL', KEYS[6], group)
    end
  end
end
for first = 1, #indexed, 1000 do
  redis.call('ZADD', KEYS[2], unpack(indexed, first, math.min(first + 999, #indexed)))
end
if done > 0 then
  redis.call('HINCRBY', KEYS[3], 'processed', done)
  if done > uncounted then redis.call('HINCRBY', KEYS[3], 'active', uncounted - done) end
end
return stale
