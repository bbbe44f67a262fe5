-- requeue.lua: a worker shutting down gives back jobs it leased but did not finish. They go back
-- to the queue at once (no wait for the lease to expire): priority-0 jobs to the head of the list,
-- others into `prioritized` by their priority. The attempt is not counted: the job did not fail,
-- the worker left.
--
-- KEYS[1] pending (list)   KEYS[2] prioritized (zset)   KEYS[3] active (zset)   KEYS[4] seq (counter)
-- KEYS[5] stats (hash)     KEYS[6] started (hash: lease group -> entries started)
-- ARGV[1] key prefix "ostq:{<queue>}:"
-- then per group: group, all ("1" when the group has no other unfinished job), k, and k indexes
-- Returns the number of jobs given back.
local prefix = ARGV[1]
-- @include lib/queue.lua
-- @include lib/envelope.lua
local QUEUE = {pending = KEYS[1], prioritized = KEYS[2], seq = KEYS[4]}

-- Check the whole call before writing anything: a malformed call must not stop half-way.
-- @include lib/args.lua
local i = 2
while i <= #ARGV do
  local k = parse_int(ARGV[i + 2])
  if ARGV[i] == '' or not (ARGV[i + 1] == '0' or ARGV[i + 1] == '1') or not k then
    return redis.error_reply('ERR ostq: requeue.lua: malformed group at ARGV[' .. i .. ']')
  end
  for j = i + 3, i + 2 + k do
    if not parse_int(ARGV[j]) then
      return redis.error_reply('ERR ostq: requeue.lua: malformed index at ARGV[' .. j .. ']')
    end
  end
  i = i + 3 + k
end

local returned, uncounted = 0, 0
i = 2
while i <= #ARGV do
  local group, all, k = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + k
  local key = prefix .. 'lease:' .. group
  -- Not a group that is gone or being recovered (score 0: recovery owns its entries).
  if (tonumber(redis.call('ZSCORE', KEYS[3], group)) or 0) > 0 then
    -- A staged group given back before claim.lua: its job was never counted as active.
    local counted = not unstage(prefix, group)
    -- Backwards, so that the earliest job given back is the next to run.
    for j = first + k - 1, first, -1 do
      local index = tonumber(ARGV[j])
      local env = redis.call('LINDEX', key, index)
      if env and env ~= '' then
        redis.call('LSET', key, index, '')
        -- An invalid entry goes back as it is, to the head of the list: the next worker to
        -- lease it files it in the dead set with the reason.
        local job = decode_job(env)
        local priority = 0
        if job then
          priority = job[7]
          if job[2] % 2 == 1 then
            redis.call('HSET', prefix .. 'job:' .. job[1], 'state', 'pending')
          end
        end
        route(QUEUE, env, priority, true)
        returned = returned + 1
        if not counted then uncounted = uncounted + 1 end
      end
    end
    if all then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[3], group)
      redis.call('HDEL', KEYS[6], group)
    end
  end
end
if returned > uncounted then redis.call('HINCRBY', KEYS[5], 'active', uncounted - returned) end
return returned
