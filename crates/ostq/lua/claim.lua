-- claim.lua: an idle worker's staged lease group has been woken (design §7.2). fetch.lua staged
-- the group (empty, in `active` and in <prefix>staged); the worker then waited with
-- BLMOVE pending lease:<g> RIGHT LEFT, which moves the next job into the group the moment it is
-- pushed, so the job reaches the worker with the wake-up. This call makes the group an ordinary
-- lease group: its job counts as active, a tracked job's record says so, the `started` event goes
-- out, and a bare entry or a bin payload is rewritten as fetch.lua would (lib/lease.lua). A group
-- the wait left empty (it timed out) or holding only the wake marker is deleted.
--
-- The worker starts a job it can run as it is before this call's reply (that is the point), so
-- the job's outcome may reach Redis before it: whichever of complete.lua, fail.lua, requeue.lua,
-- fetch.lua's recovery and this call settles the group first takes it out of <prefix>staged, and
-- this call then does nothing.
--
-- KEYS[1] active (zset)   KEYS[2] stats (hash)   KEYS[3] config (hash)
-- KEYS[4] events (stream; also the pub/sub channel name)
-- ARGV[1] key prefix "ostq:{<queue>}:"   ARGV[2] the staged group   ARGV[3] lease ms
-- Returns {1, entry} when a job was claimed (the entry as the worker must run it), else {0}.
-- (No lease list survives its group's settling, so entries in a group that is neither staged nor
-- in `active` can only come from a wait served too late: see the adoption below.)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, group = ARGV[1], ARGV[2]
-- @include lib/args.lua
if not string.find(group or '', '^[1-9]%d*$') then error('ostq: claim.lua ARGV[2] must be a lease group id') end
local lease_ms = argv_int(3, 1, 1e12)
-- @include lib/events.lua
-- @include lib/queue.lua
-- @include lib/envelope.lua
-- @include lib/lease.lua

local key = prefix .. 'lease:' .. group
if not unstage(prefix, group) then
  -- Settled already (its job's outcome, or recovery, came first), or claimed: nothing to do.
  -- Unless a wait reached Redis after the group's deadline had passed and recovery had dropped
  -- it (a worker frozen for longer than a lease): it then moved a job into a group that nobody
  -- holds and no recovery would find. That job is adopted here, as if the group were staged.
  if redis.call('ZSCORE', KEYS[1], group) or redis.call('LLEN', key) == 0 then return {0} end
end
-- (One entry at most: one BLMOVE moved it.)
local entry = redis.call('LINDEX', key, 0)
local env = nil
if entry then
  local emit, EVENTS = event_emitter(KEYS[3], KEYS[4], prefix, now)
  env = lease_entry(entry, group, 0, prefix, now, emit, EVENTS ~= '')
end
if not env then
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], group)
  return {0}
end
if env ~= entry then redis.call('LSET', key, 0, env) end
redis.call('ZADD', KEYS[1], now + lease_ms, group)
redis.call('HINCRBY', KEYS[2], 'active', 1)
return {1, env}
