-- renew.lua: extend the lease groups a worker still holds; report the ones it lost (expired and
-- recovered by another worker, or being recovered: score 0, see fetch.lua) so it can stop
-- renewing them.
--
-- KEYS[1] active (zset)
-- ARGV[1] lease ms, then the groups to renew
-- Returns the groups that are no longer held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- @include lib/args.lua
local lease = parse_int(ARGV[1], 1, 1e12)
if not lease then
  return redis.error_reply('ERR ostq: renew.lua lease ms must be a positive integer')
end
local deadline = now + lease
local groups = {}
for i = 2, #ARGV do groups[#groups + 1] = ARGV[i] end
if #groups == 0 then return {} end
local held = redis.call('ZMSCORE', KEYS[1], unpack(groups))
local args, lost = {}, {}
for k, group in ipairs(groups) do
  if held[k] and tonumber(held[k]) > 0 then
    args[#args + 1] = deadline
    args[#args + 1] = group
  else
    lost[#lost + 1] = group
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(args)) end
return lost
