-- history.lua: add a worker's tally of outcomes to the queue's history: a hash per minute and a
-- hash per hour named from the server's clock, and the queue's totals (docs/design.md §2,
-- "History"). Workers sum what they wrote and send it once a second per queue, never per job.
--
-- KEYS: none. The hashes are <prefix>hist:m:<minute>, <prefix>hist:h:<hour> and
--   <prefix>hist:all; the prefix carries the queue's hash tag, so they live in the queue's slot
--   (as status records do).
-- ARGV[1] key prefix "ostq:{<queue>}:"
-- ARGV[2], ARGV[3], ... pairs: field "<task>|<figure>" (1..400 bytes), increment (1..10^14-1)
-- Returns the number of fields written. Nothing is written unless every pair is valid. (fetch.lua
-- adds the figures of the jobs it recovers from lost workers itself, with the same helper.)
-- @include lib/args.lua
-- @include lib/history.lua
local prefix = ARGV[1]
if type(prefix) ~= 'string' or not string.find(prefix, '^ostq:{.+}:$') then
  error('ostq: ARGV[1] must be a key prefix "ostq:{<queue>}:"')
end
if #ARGV % 2 ~= 1 then
  error('ostq: history takes field/increment pairs after the prefix')
end
for i = 2, #ARGV, 2 do
  local field = ARGV[i]
  if #field == 0 or #field > 400 or not string.find(field, '|', 1, true) then
    error('ostq: ARGV[' .. i .. '] must be a field "<task>|<figure>" of 1..400 bytes')
  end
  argv_int(i + 1, 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
return history_add(prefix, now, fields)
