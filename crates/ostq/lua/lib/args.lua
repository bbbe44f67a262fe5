-- lib/args.lua: checking a script's numeric arguments. Redis parses the argument strings a script
-- passes on by its own rules ("-0", "007", "1e3" and " 5" are not integers to LINDEX), so a
-- number is checked as text: "0" or a decimal without leading zeros, at most 15 digits (exact as
-- a Lua double). Returns the number when it is in lo..hi, else nil.
local function uint_arg(s, lo, hi)
  if type(s) ~= 'string' or #s > 15 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then
    return nil
  end
  local v = tonumber(s)
  if v < (lo or 0) or v > (hi or 1e15) then return nil end
  return v
end
