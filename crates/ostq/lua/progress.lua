-- progress.lua: a running job reports progress (a number or a small JSON document). Tracked jobs
-- keep it in their status record; every job emits a `progress` event when events are on.
--
-- KEYS[1] config (hash)   KEYS[2] events (stream; also the pub/sub channel name)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] job id   ARGV[3] progress (JSON text)
-- Returns 1 if a status record was updated, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, id, progress = ARGV[1], ARGV[2], ARGV[3]
-- @include lib/events.lua
local emit, EVENTS = event_emitter(KEYS[1], KEYS[2], prefix, now)
if EVENTS ~= '' then
  local ok, value = pcall(cjson.decode, progress)
  emit('progress', id, {progress = ok and value or progress})
end
local rec = prefix .. 'job:' .. id
if redis.call('EXISTS', rec) == 1 then
  redis.call('HSET', rec, 'progress', progress)
  return 1
end
return 0
