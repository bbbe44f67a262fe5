-- lib/history.lua: adding figures to the queue's history (docs/design.md §2, "History"): a hash
-- per minute (kept 25 hours), per hour (kept 8 days) and one of totals since the queue began
-- (kept as long as the queue), named from the prefix and the time. `fields` is a flat list:
-- field, count, field, count, ... (counts as checked strings or small numbers). Returns the
-- number of fields written.
--
-- The totals hash holds at most HISTORY_MAX_FIELDS fields: once it is full, a field it does not
-- have yet is counted as '~other|<figure>' in all three hashes, so producers inventing task
-- names cannot grow the history (or a scrape's label sets) without bound.
local HISTORY_MAX_FIELDS = 20000

local function history_add(prefix, now, fields)
  if #fields == 0 then return 0 end
  local minute = prefix .. 'hist:m:' .. math.floor(now / 60000)
  local hour = prefix .. 'hist:h:' .. math.floor(now / 3600000)
  local all = prefix .. 'hist:all'
  local full = redis.call('HLEN', all) >= HISTORY_MAX_FIELDS
  for i = 1, #fields, 2 do
    local field = fields[i]
    if full and redis.call('HEXISTS', all, field) == 0 then
      field = '~other|' .. string.match(field, '[^|]*$')
    end
    redis.call('HINCRBY', minute, field, fields[i + 1])
    redis.call('HINCRBY', hour, field, fields[i + 1])
    redis.call('HINCRBY', all, field, fields[i + 1])
  end
  redis.call('PEXPIRE', minute, 90000000)
  redis.call('PEXPIRE', hour, 691200000)
  return #fields / 2
end
