-- wait.lua: a `wait_for` caller reads a tracked job's outcome and, when the job has not finished,
-- asks to be woken. The record's `waited` field tells complete.lua to push the job's done:<id>
-- token, which it skips for jobs nobody waits on (the token costs a list and its expiry per job).
-- Marking and reading in one script closes the race with a completion that lands between them;
-- a caller that misses a token anyway (an older worker, a token expired) reads again within its
-- own bounded wait.
--
-- KEYS[1] the job's status record <prefix>job:<id> (hash)
-- Returns {state, result, error}, each false when absent (no record: not a tracked job).
local r = redis.call('HMGET', KEYS[1], 'state', 'result', 'error')
if r[1] and r[1] ~= 'completed' and r[1] ~= 'dead' then
  redis.call('HSET', KEYS[1], 'waited', '1')
end
return r
