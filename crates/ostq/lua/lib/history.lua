-- lib/history.lua: adding figures to the queue's history (docs/design.md §2, "History"): a hash
-- per minute (kept 25 hours) and per hour (kept 8 days), named from the prefix and the time.
-- `fields` is a flat list: field, count, field, count, ... (counts as checked strings or small
-- numbers). Returns the number of fields written.
local function history_add(prefix, now, fields)
  if #fields == 0 then return 0 end
  local minute = prefix .. 'hist:m:' .. math.floor(now / 60000)
  local hour = prefix .. 'hist:h:' .. math.floor(now / 3600000)
  for i = 1, #fields, 2 do
    redis.call('HINCRBY', minute, fields[i], fields[i + 1])
    redis.call('HINCRBY', hour, fields[i], fields[i + 1])
  end
  redis.call('PEXPIRE', minute, 90000000)
  redis.call('PEXPIRE', hour, 691200000)
  return #fields / 2
end
