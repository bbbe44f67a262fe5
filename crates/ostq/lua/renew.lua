-- renew.lua: extend the lease groups a worker still holds, record how far each has started, and
-- report the ones it lost (expired and recovered by another worker, or being recovered: score 0,
-- see fetch.lua) so it can stop renewing them.
--
-- A worker leases more jobs than it has free slots (prefetch) and parks the rest; it starts them
-- in group order, so "entries 0 .. s-1 have started" says which ones ran. Recovery (fetch.lua)
-- counts an attempt only for those: a parked job that never started goes back unharmed.
--
-- KEYS[1] active (zset)   KEYS[2] started (hash: lease group -> entries started)
-- ARGV[1] lease ms, then pairs: a group to renew, and how many of its entries have started by now
--         ("" when the worker has nothing new to say: the mark stays as it is)
-- Returns the groups that are no longer held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- @include lib/args.lua
local lease = parse_int(ARGV[1], 1, 1e12)
if not lease then
  return redis.error_reply('ERR ostq: renew.lua lease ms must be a positive integer')
end
if #ARGV % 2 ~= 1 then
  return redis.error_reply('ERR ostq: renew.lua takes pairs of a group and its start mark')
end
local deadline = now + lease
local groups, marks = {}, {}
for i = 2, #ARGV, 2 do
  groups[#groups + 1] = ARGV[i]
  local mark = ARGV[i + 1]
  if mark ~= '' and not parse_int(mark, 0) then
    return redis.error_reply('ERR ostq: renew.lua start mark at ARGV[' .. (i + 1) .. '] must be a count')
  end
  marks[#marks + 1] = mark
end
if #groups == 0 then return {} end
local held = redis.call('ZMSCORE', KEYS[1], unpack(groups))
local args, started, lost = {}, {}, {}
for k, group in ipairs(groups) do
  if held[k] and tonumber(held[k]) > 0 then
    args[#args + 1] = deadline
    args[#args + 1] = group
    if marks[k] ~= '' then
      started[#started + 1] = group
      started[#started + 1] = marks[k]
    end
  else
    -- (No mark for a group that is gone or being recovered: it would outlive the group.)
    lost[#lost + 1] = group
  end
end
if #args > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(args)) end
if #started > 0 then redis.call('HSET', KEYS[2], unpack(started)) end
return lost
