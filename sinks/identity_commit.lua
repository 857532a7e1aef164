-- Commit one batch's identity decisions atomically, if nothing it read has changed since.
-- (split, tokens_unchanged and CHUNK come from identity_lib.lua.)
-- ARGV: prefix, token, token_ttl_s, then seven sections, each one string joined by '\n':
--   4 new keys     that must still be absent
--   5 root checks  customer, token it was read or written with ...   (a record ends with
--                  the token of the commit that last wrote it: `...,"<32 hex>"]`)
--   6 moves        from customer, to customer ...   each customer Redis holds that the batch
--                  folded, straight to where it ended, applied to its full member set
--   7 node sets    key, value ...
--   8 member adds  customer, key ...
--   9 root sets    customer, record ...
--  10 root deletes customer ...
--  11 merge outbox  loser|evidence event, merge record (JSON) ...   kept until the ingest agent has produced
--                   them (`RedisIdentityStore.ack_merges`), so a crash cannot lose a merge
-- Returns 1 when applied, 2 when this token was applied before (a retried call), 0 when another
-- writer changed a customer this batch read (the caller then decides the batch again).
local p, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nkey, rkey, tkey = p .. ':n', p .. ':r', p .. ':tok:' .. token
if redis.call('EXISTS', tkey) == 1 then return 2 end

local new = split(ARGV[4])
for s = 1, #new, CHUNK do
  local vals = redis.call('HMGET', nkey, unpack(new, s, math.min(s + CHUNK - 1, #new)))
  for i = 1, #vals do
    if vals[i] then return 0 end
  end
end
if not tokens_unchanged(rkey, split(ARGV[5])) then return 0 end

local moves = split(ARGV[6])
for i = 1, #moves, 2 do
  local src, dst = moves[i], moves[i + 1]
  local skey = p .. ':m:' .. src
  local members = redis.call('SMEMBERS', skey)
  local dkey = p .. ':m:' .. dst
  local half = CHUNK / 2  -- two HSET arguments per member
  for s = 1, #members, half do
    local e = math.min(s + half - 1, #members)
    local vals = redis.call('HMGET', nkey, unpack(members, s, e))
    local sets = {}
    for j = 1, #vals do
      local v = vals[j]
      if v then
        sets[#sets + 1] = members[s + j - 1]
        sets[#sets + 1] = dst .. string.sub(v, (string.find(v, '|', 1, true)))
      end
    end
    if #sets > 0 then redis.call('HSET', nkey, unpack(sets)) end
    -- SADD the moved members only: SUNIONSTORE would copy the whole (growing) target set
    redis.call('SADD', dkey, unpack(members, s, e))
  end
  if #members > 0 then redis.call('DEL', skey) end
end

local function bulk(cmd, key, items)
  for s = 1, #items, CHUNK do
    redis.call(cmd, key, unpack(items, s, math.min(s + CHUNK - 1, #items)))
  end
end
bulk('HSET', nkey, split(ARGV[7]))
local adds = split(ARGV[8])
for i = 1, #adds, 2 do
  redis.call('SADD', p .. ':m:' .. adds[i], adds[i + 1])
end
bulk('HSET', rkey, split(ARGV[9]))
bulk('HDEL', rkey, split(ARGV[10]))
bulk('HSET', p .. ':mo', split(ARGV[11]))
redis.call('SET', tkey, '1', 'EX', ttl)
return 1
