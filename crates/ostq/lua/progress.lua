-- progress.lua: a running job reports progress (a number or a small JSON document). Tracked jobs
-- keep it in their status record; every job emits a `progress` event when events are on.
--
-- KEYS[1] config (hash)   KEYS[2] events (stream; also the pub/sub channel name)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] job id   ARGV[3] progress (JSON text)
-- Returns 1 if a status record was updated, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, id, progress = ARGV[1], ARGV[2], ARGV[3]
local EVENTS = redis.call('HGET', KEYS[1], 'events') or ''
if EVENTS ~= '' then
  local ok, value = pcall(cjson.decode, progress)
  local json = cjson.encode({event = 'progress', queue = string.sub(prefix, 7, -3), id = id, ts = now,
    progress = ok and value or progress})
  if EVENTS ~= 'stream' then redis.call('PUBLISH', KEYS[2], json) end
  if EVENTS ~= 'pubsub' then redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'e', json) end
end
local rec = prefix .. 'job:' .. id
if redis.call('EXISTS', rec) == 1 then
  redis.call('HSET', rec, 'progress', progress)
  return 1
end
return 0
