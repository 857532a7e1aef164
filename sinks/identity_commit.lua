-- Commit one batch's identity decisions atomically, if nothing it read has changed since.
-- ARGV: prefix, token, token_ttl_s, then counted sections:
--   node checks  (key, expected value or '' for absent) ...
--   root checks  (customer id, expected record or '') ...
--   moves        (from customer, to customer) ...   replayed in order on the full member sets
--   node sets    (key, value) ...
--   member adds  (customer, key) ...
--   root sets    (customer, record) ...
--   root deletes (customer) ...
-- Returns 1 when applied, 2 when this token was applied before (a retried call), 0 when another
-- writer changed a node or customer this batch read (the caller decides the batch again).
local p, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nkey, rkey, tkey = p .. ':n', p .. ':r', p .. ':tok:' .. token
if redis.call('EXISTS', tkey) == 1 then return 2 end
local i = 4
local function count()
  local n = tonumber(ARGV[i]); i = i + 1; return n
end

local n = count()
for _ = 1, n do
  local cur = redis.call('HGET', nkey, ARGV[i])
  if (cur or '') ~= ARGV[i + 1] then return 0 end
  i = i + 2
end
n = count()
for _ = 1, n do
  local cur = redis.call('HGET', rkey, ARGV[i])
  if (cur or '') ~= ARGV[i + 1] then return 0 end
  i = i + 2
end

n = count()
for _ = 1, n do
  local src, dst = ARGV[i], ARGV[i + 1]
  i = i + 2
  local skey = p .. ':m:' .. src
  local members = redis.call('SMEMBERS', skey)
  for j = 1, #members do
    local v = redis.call('HGET', nkey, members[j])
    if v then
      redis.call('HSET', nkey, members[j], dst .. string.sub(v, (string.find(v, '|', 1, true))))
    end
  end
  if #members > 0 then
    local dkey = p .. ':m:' .. dst
    redis.call('SUNIONSTORE', dkey, dkey, skey)
    redis.call('DEL', skey)
  end
end

local CHUNK = 2000
local function bulk(cmd, key, width)
  local total = count()
  local done = 0
  while done < total do
    local take = math.min(CHUNK, total - done)
    redis.call(cmd, key, unpack(ARGV, i, i + take * width - 1))
    i = i + take * width
    done = done + take
  end
end

bulk('HSET', nkey, 2)
n = count()
for _ = 1, n do
  redis.call('SADD', p .. ':m:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
bulk('HSET', rkey, 2)
bulk('HDEL', rkey, 1)
redis.call('SET', tkey, '1', 'EX', ttl)
return 1
