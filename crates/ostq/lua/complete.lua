-- complete.lua: a worker finished jobs successfully; end their leases. A lease that is no longer
-- held (it expired and the job was recovered, or it was requeued) is left alone: that late ack
-- must not touch the job, which belongs to someone else now.
--
-- KEYS[1] active (zset)   KEYS[2] inflight (hash)   KEYS[3] completed (zset)   KEYS[4] stats (hash)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] status record retention seconds
-- then 3 fields per job: lease, id if the job is tracked else "", result ("" = none)
-- Returns the number of stale leases (acks that were ignored).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local leases = {}
for i = 3, #ARGV, 3 do leases[#leases + 1] = ARGV[i] end
if #leases == 0 then return 0 end
local held = redis.call('ZMSCORE', KEYS[1], unpack(leases))
local live = {}
for k, lease in ipairs(leases) do
  if held[k] then
    live[#live + 1] = lease
    local id = ARGV[3 * k + 1]
    if id ~= '' then
      local rec = prefix .. 'job:' .. id
      local result = ARGV[3 * k + 2]
      redis.call('HSET', rec, 'state', 'completed', 'finished_at', now)
      if result ~= '' then redis.call('HSET', rec, 'result', result) end
      redis.call('EXPIRE', rec, ttl)
      redis.call('ZADD', KEYS[3], now, id)
    end
  end
end
if #live > 0 then
  redis.call('ZREM', KEYS[1], unpack(live))
  redis.call('HDEL', KEYS[2], unpack(live))
  redis.call('HINCRBY', KEYS[4], 'processed', #live)
end
return #leases - #live
