-- lib/lease.lua: what leasing does to each entry a worker gets, in fetch.lua and claim.lua alike
-- (needs lib/envelope.lua). Returns the entry as the worker must run it, or nil for the wake
-- marker (it takes no slot and is dropped):
-- - a bare entry (a plain LPUSH of a payload, as Ost did) is wrapped, with the id ~<group>.<index>,
--   so it can be retried and tracked;
-- - a payload written as bin becomes str, so the scripts (cmsgpack) can read the job too;
-- - a tracked job's record says active, if it exists (garbage that looks like a tracked header
--   must not leave one: every record has a `state`, so two fields added means there was no record,
--   and the HSET is undone; one call instead of EXISTS then HSET);
-- - the `started` event goes out when events are on (emit from lib/events.lua).
local function lease_entry(env, group, index, prefix, now, emit, events_on)
  local byte, sub = string.byte, string.sub
  local b = byte(env, 1)
  if b == 0x90 and #env == 1 then return nil end
  if b == nil or b < 0x90 or b > 0x9f then
    return new_envelope('~' .. group .. '.' .. index, 0, env, '', 0, 0, now)
  end
  -- Read id and flags without unpacking the payload (lib/envelope.lua's header).
  local off, id_len, flags = header(env)
  if off then
    local m = byte(env, off + id_len + 1)
    if m and m >= 0xc4 and m <= 0xc6 then env = str_payload(env) end
    if flags % 2 == 1 then
      local rec = prefix .. 'job:' .. sub(env, off, off + id_len - 1)
      if redis.call('HSET', rec, 'state', 'active', 'started_at', now) == 2 then
        redis.call('DEL', rec)
      end
    end
    if events_on then emit('started', sub(env, off, off + id_len - 1)) end
  end
  return env
end
