-- lib/args.lua: checking a script's numeric arguments. Redis parses the argument strings a script
-- passes on by its own rules ("-0", "007", "1e3" and " 5" are not integers to LINDEX), so a
-- number is checked as text: "0" or a decimal without leading zeros, with an optional minus, at
-- most 14 digits. (Redis turns a Lua number back into text with 14 significant digits: 10^14
-- would reach a command as "1e+14", which is no integer.) Returns the number when it is in
-- lo..hi (default 0..10^14-1), else nil.
local MAX_ARG = 99999999999999
local function parse_int(s, lo, hi)
  if type(s) ~= 'string' or #s > 15 or not (s == '0' or string.find(s, '^%-?[1-9]%d*$')) then
    return nil
  end
  local v = tonumber(s)
  if v < (lo or 0) or v > (hi or MAX_ARG) or v < -MAX_ARG then return nil end
  return v
end

-- ARGV[i] read by parse_int; an error naming the argument otherwise (call it before any write).
local function argv_int(i, lo, hi)
  local v = parse_int(ARGV[i], lo, hi)
  if not v then
    error('ostq: ARGV[' .. i .. '] must be an integer in ' .. (lo or 0) .. '..' .. (hi or MAX_ARG))
  end
  return v
end

-- An argument as an error message may quote it: in double quotes when it is printable ASCII (cut
-- to max bytes), else only its length. An error reply is a status line, which clients read as
-- text: raw bytes that are not UTF-8 there make them fail to read the reply at all (and the
-- connection with it).
local function quoted_arg(s, max)
  if type(s) ~= 'string' then return 'of type ' .. type(s) end
  if string.find(s, '^[\32-\126]*$') then return '"' .. string.sub(s, 1, max) .. '"' end
  return 'of ' .. #s .. ' bytes (not printable)'
end
