-- renew.lua: extend the leases a worker still holds; report the ones it lost (expired and
-- recovered by another worker, or removed by an operator) so it can stop caring about them.
--
-- KEYS[1] active (zset)
-- ARGV[1] lease ms, then the leases to renew
-- Returns the leases that are no longer held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local leases = {}
for i = 2, #ARGV do leases[#leases + 1] = ARGV[i] end
if #leases == 0 then return {} end
local held = redis.call('ZMSCORE', KEYS[1], unpack(leases))
local args, lost = {}, {}
for k, lease in ipairs(leases) do
  if held[k] then
    args[#args + 1] = deadline
    args[#args + 1] = lease
  else
    lost[#lost + 1] = lease
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(args)) end
return lost
