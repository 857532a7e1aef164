-- Helpers shared by identity_read.lua and identity_commit.lua (RedisIdentityStore puts this
-- file in front of each script).
local CHUNK = 4000

-- A '\n'-joined string as a table ('' is an empty table).
local function split(s)
  local out, start = {}, 1
  if s == '' then return out end
  while true do
    local j = string.find(s, '\n', start, true)
    if not j then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, j - 1)
    start = j + 1
  end
end

-- Whether every customer in `checks` ('customer', 'token', ... as a table) still has a record in
-- hash `rkey` stamped with that token (a record ends with it: `...,"<32 hex>"]`).
local function tokens_unchanged(rkey, checks)
  local cids, tokens = {}, {}
  for i = 1, #checks, 2 do
    cids[#cids + 1] = checks[i]
    tokens[#tokens + 1] = checks[i + 1]
  end
  for s = 1, #cids, CHUNK do
    local vals = redis.call('HMGET', rkey, unpack(cids, s, math.min(s + CHUNK - 1, #cids)))
    for i = 1, #vals do
      local v = vals[i]
      if not v or string.sub(v, -34, -3) ~= tokens[s + i - 1] then return false end
    end
  end
  return true
end
