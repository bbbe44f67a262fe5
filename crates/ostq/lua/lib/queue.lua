-- lib/queue.lua: putting ready jobs where workers find them, and the records and keys that go
-- with a job's end.

-- Priority is scaled above a 42-bit FIFO sequence: score = -priority * 2^42 + seq, so higher
-- priorities come first and equal ones in push order.
local PRIO = 4398046511104
-- 0x90, an empty msgpack array: wakes workers blocked on the pending list, never runs.
local WAKE = '\144'

-- Workers idle in BLMOVE on the pending list; an entry there wakes them. Only an empty list needs
-- one (a worker never blocks while the list has entries), so the scripts add at most one marker;
-- fetch.lua drops it when it comes up. (Queue::pause and Queue::set_rate_limit add one per staged
-- group, design §7.2, to end each staged wait.)
local function wake(pending)
  if redis.call('LLEN', pending) == 0 then redis.call('LPUSH', pending, WAKE) end
end

-- Puts a ready envelope where fetch will find it: priority 0 onto the pending list (at the head
-- for jobs that already waited their turn, else at the tail), any other priority (an integer in
-- -1000..1000, checked by the caller) into `prioritized`, waking idle workers.
-- keys: {pending = , prioritized = , seq = }
local function route(keys, env, priority, head)
  if priority ~= 0 then
    local seq = redis.call('INCR', keys.seq) % PRIO
    redis.call('ZADD', keys.prioritized, -priority * PRIO + seq, env)
    wake(keys.pending)
  elseif head then
    redis.call('RPUSH', keys.pending, env)
  else
    redis.call('LPUSH', keys.pending, env)
  end
end

-- The lowest score of a zset, or nil.
local function first_score(zkey)
  local r = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  return tonumber(r[2])
end

-- A job that held a unique key until it finished gives it up, if the key still names it.
local function release_unique(prefix, unique, id)
  if type(unique) == 'string' and unique ~= '' then
    local ukey = prefix .. 'unique:' .. unique
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
end

-- Wakes `wait_for` callers of a tracked job that finished: a token on done:<id>, kept 60 s.
local function notify_done(prefix, id)
  local done = prefix .. 'done:' .. id
  redis.call('RPUSH', done, 1)
  redis.call('EXPIRE', done, 60)
end

-- An idle worker's staged lease group (design §7.2): registered by fetch.lua before the worker's
-- BLMOVE moves a job into it, and claimed (made an ordinary group) by claim.lua after. Its job is
-- not counted in the `active` figure until then. Whichever script settles the group first takes
-- it out of the set: true when this call did, that is when the group's job was never counted.
local function unstage(prefix, group)
  return redis.call('SREM', prefix .. 'staged', group) == 1
end
