-- fail.lua: a worker's attempt at jobs failed; move each to `retry` (due after a backoff the worker
-- chose) or to `dead`, with the envelope the worker rewrote (attempt count, last error). Stale
-- leases are ignored, as in complete.lua.
--
-- KEYS[1] active (zset)   KEYS[2] inflight (hash)   KEYS[3] retry (zset)    KEYS[4] dead (zset)
-- KEYS[5] jobs (hash)     KEYS[6] stats (hash)      KEYS[7] pending (list)  KEYS[8] scheduled (zset)
-- ARGV[1] key prefix "ostq:{<queue>}:"
-- then 8 fields per job: lease, id, new envelope (attempt count and last error updated),
--   "retry" or "dead", retry delay ms, tracked ("1" or "0"), attempt number that failed, error text
-- Returns the number of stale leases.
local WAKE = '\144'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]

local function first_score(zkey)
  local r = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  return tonumber(r[2])
end
local earliest = first_score(KEYS[3])
local s = first_score(KEYS[8])
if s and (earliest == nil or s < earliest) then earliest = s end

local stale, failed, wake = 0, 0, false
for i = 2, #ARGV, 8 do
  local lease, id, env, target = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('ZSCORE', KEYS[1], lease) then
    redis.call('ZREM', KEYS[1], lease)
    redis.call('HDEL', KEYS[2], lease)
    failed = failed + 1
    local state
    if target == 'retry' then
      state = 'retry'
      local due = now + (tonumber(ARGV[i + 4]) or 0)
      redis.call('ZADD', KEYS[3], due, id)
      if earliest == nil or due < earliest then earliest = due; wake = true end
    else
      state = 'dead'
      redis.call('ZADD', KEYS[4], now, id)
    end
    redis.call('HSET', KEYS[5], id, env)
    if ARGV[i + 5] == '1' then
      local rec = prefix .. 'job:' .. id
      redis.call('HSET', rec, 'state', state, 'attempt', ARGV[i + 6], 'error', ARGV[i + 7])
      if state == 'dead' then redis.call('HSET', rec, 'finished_at', now) end
      redis.call('PERSIST', rec)
    end
  else
    stale = stale + 1
  end
end
if failed > 0 then
  redis.call('HINCRBY', KEYS[6], 'processed', failed)
  redis.call('HINCRBY', KEYS[6], 'failed', failed)
end
-- Wake idle workers (blocked on the empty pending list) so they plan for the earlier retry.
if wake and redis.call('LLEN', KEYS[7]) == 0 then redis.call('LPUSH', KEYS[7], WAKE) end
return stale
