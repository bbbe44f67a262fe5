-- lib/events.lua: job events, per queue, off unless enabled (the config hash's field `events`:
-- pubsub, stream or both). Each is one JSON document, published on the pub/sub channel and/or
-- appended to the capped stream; both are named by the events key.
--
-- Returns emit(kind, id, extra) and the mode ('' when off: emit then costs nothing). A script
-- without the config and events keys (push.lua called with five keys) emits nothing.
local function event_emitter(config_key, events_key, prefix, now)
  local mode = ''
  if config_key and events_key then mode = redis.call('HGET', config_key, 'events') or '' end
  local queue = string.sub(prefix, 7, -3)
  local function emit(kind, id, extra)
    if mode == '' then return end
    local event = {event = kind, queue = queue, id = id, ts = now}
    if extra then for k, v in pairs(extra) do event[k] = v end end
    local json = cjson.encode(event)
    if mode ~= 'stream' then redis.call('PUBLISH', events_key, json) end
    if mode ~= 'pubsub' then redis.call('XADD', events_key, 'MAXLEN', '~', 10000, '*', 'e', json) end
  end
  return emit, mode
end
