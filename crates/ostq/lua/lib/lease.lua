-- lib/lease.lua: what leasing does to each entry a worker gets, in fetch.lua and claim.lua alike
-- (needs lib/envelope.lua). Each entry becomes what the worker must run, and the wake
-- marker (it takes no slot) is dropped:
-- - a bare entry (a plain LPUSH of a payload, as Ost did) is wrapped, with the id ~<group>.<index>,
--   so it can be retried and tracked;
-- - a payload written as bin becomes str, so the scripts (cmsgpack) can read the job too;
-- - a tracked job's record says active, if it exists (garbage that looks like a tracked header
--   must not leave one: every record has a `state`, so two fields added means there was no record,
--   and the HSET is undone; one call instead of EXISTS then HSET);
-- - the `started` event goes out when events are on (emit from lib/events.lua).
-- (Looked up once per script, not once per job.)
local lease_byte, lease_sub = string.byte, string.sub

-- Leases the entries of `envs` in order, appending each to out[n + 1], ... and returning the new n;
-- entry i of the group is the (n - base)-th appended. One call per batch: fetch.lua leases a few
-- hundred entries per call, and a Lua call per entry showed as 10-15 % of its Redis time per job.
local function lease_entries(envs, group, prefix, now, emit, events_on, out, n, base)
  local byte, sub = lease_byte, lease_sub
  for _, env in ipairs(envs) do
    local b = byte(env, 1)
    if not (b == 0x90 and #env == 1) then
      if b == nil or b < 0x90 or b > 0x9f then
        env = new_envelope('~' .. group .. '.' .. (n - base), 0, env, '', 0, 0, now)
      else
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
      end
      n = n + 1
      out[n] = env
    end
  end
  return n
end

-- One entry, entry `index` of its group: as lease_entries leases it, or nil for the wake marker.
local function lease_entry(env, group, index, prefix, now, emit, events_on)
  local out = {}
  lease_entries({env}, group, prefix, now, emit, events_on, out, index, index)
  return out[index + 1]
end
