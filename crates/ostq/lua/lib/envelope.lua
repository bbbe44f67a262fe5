-- lib/envelope.lua: reading envelopes from Redis without trusting them. Any language, or a hand
-- with redis-cli, can put bytes where scripts read jobs, so a script checks every field it decodes
-- before its first write; a bad entry is filed in the dead set with the reason, never allowed to
-- stop a script half-way (Redis does not undo a script's earlier writes when it errors).
--
-- One definition of a valid envelope, the same as envelope.rs (Envelope::decode) and push.lua:
--   [1] id: non-empty UTF-8 str, at most 255 bytes    [2] flags: int 0..127
--   [3] payload: str (bin too: see str_payload)       [4] name: UTF-8 str
--   [5] attempt: int 0..4294967295                     [6] max_attempts: int 0..4294967295
--   [7] priority: int -1000..1000                      [8] enqueued_at_ms: int 0..2^53
--   [9] last_error: UTF-8 str                          [10] unique key (optional): UTF-8 str
--   [11] traceparent (optional): str                   [12] tracestate (optional): str
-- Fields after the tenth are kept (later versions may append), up to the first nil. A job
-- pushed inside a traced span carries the producer's W3C trace context in [11] and [12]; [10]
-- is then '' when it holds no unique key (never nil, which would hide [11] from every script).
-- A trace field must be a str like any other field, but one that is over 512 bytes or not
-- UTF-8 does not make the job invalid: it is blanked (''), and the job runs without a parent
-- span; a blanked traceparent takes its tracestate with it. (envelope.rs reads them the same.)

local MAX_U32 = 4294967295
local MAX_MS = 9007199254740992 -- 2^53: every whole number up to it is exact in a Lua double
local MAX_TRACE = 512 -- bytes of a traceparent or tracestate (MAX_TRACE_LEN in envelope.rs)

local function is_int(v, lo, hi)
  return type(v) == 'number' and v == v and v >= lo and v <= hi and math.floor(v) == v
end

-- Lua patterns see bytes: ASCII (the common case) is checked in one find, the rest byte by byte.
local function is_utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n, byte = 1, #s, string.byte
  while i <= n do
    local c = byte(s, i)
    local extra
    if c < 0x80 then extra = 0
    elseif c >= 0xc2 and c <= 0xdf then extra = 1
    elseif c >= 0xe0 and c <= 0xef then extra = 2
    elseif c >= 0xf0 and c <= 0xf4 then extra = 3
    else return false end
    for k = 1, extra do
      local cc = byte(s, i + k)
      if not cc or cc < 0x80 or cc > 0xbf then return false end
    end
    if extra == 2 then
      local c2 = byte(s, i + 1)
      if (c == 0xe0 and c2 < 0xa0) or (c == 0xed and c2 > 0x9f) then return false end
    elseif extra == 3 then
      local c2 = byte(s, i + 1)
      if (c == 0xf0 and c2 < 0x90) or (c == 0xf4 and c2 > 0x8f) then return false end
    end
    i = i + 1 + extra
  end
  return true
end

local function is_text(v, max)
  return type(v) == 'string' and (max == nil or #v <= max) and is_utf8(v)
end

-- Where the header of an envelope ends: returns the offset of the id, its length and the flags
-- byte, or nil when the entry does not start like an envelope (fixarray, fixstr/str8 id, fixint
-- flags). Reads bytes only: no unpacking of the payload.
local function header(env)
  local b, lb, b3 = string.byte(env, 1, 3)
  if not b or b < 0x99 or b > 0x9f then return nil end
  local id_len, off
  if lb and lb >= 0xa1 and lb <= 0xbf then id_len, off = lb - 0xa0, 3
  elseif lb == 0xd9 and b3 and b3 > 0 then id_len, off = b3, 4
  else return nil end
  local flags = string.byte(env, off + id_len)
  if not flags or flags >= 0x80 then return nil end
  return off, id_len, flags
end

-- Redis's cmsgpack cannot decode MessagePack's bin family, which msgpack libraries (Python's
-- msgpack >= 1.0, for one) write for byte strings. bin8/16/32 and str8/16/32 share their length
-- layout, so a payload written as bin becomes the same bytes as str by changing one marker byte.
-- Returns the envelope with a str payload (the same string when nothing needed changing).
local function str_payload(env)
  local off, id_len = header(env)
  if not off then return env end
  local at = off + id_len + 1
  local m = string.byte(env, at)
  if m and m >= 0xc4 and m <= 0xc6 then
    return string.sub(env, 1, at - 1) .. string.char(m + 0x15) .. string.sub(env, at + 1)
  end
  return env
end

-- Decodes and checks an envelope. Returns the job (a table of its fields) or nil and the reason.
local function decode_job(env)
  if type(env) ~= 'string' then return nil, 'no envelope' end
  local ok, job = pcall(cmsgpack.unpack, str_payload(env))
  if not ok or type(job) ~= 'table' then return nil, 'not a MessagePack array' end
  if not (job[1] and job[9] ~= nil) then return nil, 'an envelope has at least 9 fields' end
  if not (is_text(job[1], 255) and job[1] ~= '') then return nil, 'id must be a non-empty UTF-8 string of at most 255 bytes' end
  if not is_int(job[2], 0, 127) then return nil, 'flags must be an integer in 0..127' end
  if type(job[3]) ~= 'string' then return nil, 'payload must be a string' end
  if not is_text(job[4]) then return nil, 'name must be a UTF-8 string' end
  if not is_int(job[5], 0, MAX_U32) then return nil, 'attempt must be an integer in 0..4294967295' end
  if not is_int(job[6], 0, MAX_U32) then return nil, 'max_attempts must be an integer in 0..4294967295' end
  if not is_int(job[7], -1000, 1000) then return nil, 'priority must be an integer in -1000..1000' end
  if not is_int(job[8], 0, MAX_MS) then return nil, 'enqueued_at must be an integer >= 0' end
  if not is_text(job[9]) then return nil, 'last_error must be a UTF-8 string' end
  if job[10] ~= nil and not is_text(job[10]) then return nil, 'the unique key must be a UTF-8 string' end
  if job[10] ~= nil and job[11] ~= nil then
    if type(job[11]) ~= 'string' then return nil, 'the traceparent must be a string' end
    if job[12] ~= nil and type(job[12]) ~= 'string' then return nil, 'the tracestate must be a string' end
  end
  -- A copy without holes: cmsgpack packs a table with a nil inside as a map, which no reader
  -- takes for an envelope. Later fields are kept up to the first nil.
  local clean = {job[1], job[2], job[3], job[4], job[5], job[6], job[7], job[8], job[9], job[10]}
  if job[10] ~= nil then
    local k = 11
    while job[k] ~= nil do
      clean[k] = job[k]
      k = k + 1
    end
    -- A trace field that is too long or not UTF-8 is blanked, its tracestate with it.
    if clean[11] ~= nil and not (clean[11] ~= '' and is_text(clean[11], MAX_TRACE)) then
      clean[11] = ''
      if clean[12] ~= nil then clean[12] = '' end
    end
    if clean[12] ~= nil and not is_text(clean[12], MAX_TRACE) then clean[12] = '' end
  end
  return clean
end

-- A new job's envelope (see envelope.rs for the field order), the same bytes Rust builds. The
-- unique key travels with the job (a tenth field) only when given: when the job must release it
-- as it finishes. A W3C trace context (traceparent, tracestate; '' or nil for none) follows as
-- the eleventh and twelfth fields, the tenth then '' when there is no unique key.
local function new_envelope(id, flags, payload, name, max_attempts, priority, now, unique,
                            traceparent, tracestate)
  local job = {id, flags, payload, name, 0, max_attempts, priority, now, ''}
  if unique and unique ~= '' then job[10] = unique end
  if traceparent and traceparent ~= '' then
    job[10] = job[10] or ''
    job[11] = traceparent
    if tracestate and tracestate ~= '' then job[12] = tracestate end
  end
  return cmsgpack.pack(job)
end

-- An entry that is not a valid envelope, kept for the operator: its bytes become the payload of
-- a dead job, with the reason as its error. Returns the id to file it under and the wrapper. The
-- wrapper must itself be valid, so an id that is not (not UTF-8, too long, empty) is replaced by
-- "~invalid.<hex of its first 100 bytes>".
local function wrap_invalid(id, env, why, now)
  if not (type(id) == 'string' and id ~= '' and is_text(id, 200)) then
    local raw = type(id) == 'string' and string.sub(id, 1, 100) or ''
    id = '~invalid.' .. string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end)
  end
  return id, cmsgpack.pack({id, 0, env, '', 1, 1, 0, now, 'invalid job envelope: ' .. why})
end
