-- Commit one batch's identity decisions atomically, if nothing it read has changed since.
-- ARGV: prefix, token, token_ttl_s, then seven sections, each one string joined by '\n':
--   4 new keys     that must still be absent
--   5 root checks  customer, record as read ...   (records carry the token of their last commit)
--   6 moves        from customer, to customer ...   replayed in order on the full member sets
--   7 node sets    key, value ...
--   8 member adds  customer, key ...
--   9 root sets    customer, record ...
--  10 root deletes customer ...
--  11 merge outbox  loser|evidence event, merge record (JSON) ...   kept until the ingest agent has produced
--                   them (`RedisIdentityStore.ack_merges`), so a crash cannot lose a merge; each is
--                   stored as '<seq> <JSON>', seq from the counter P:mseq: the global commit order
--                   of merges, in which related merges must reach the partitions
--  12 links outbox  the batch's new identity links (JSON), kept under the token until the ingest
--                   agent has written their rows (`RedisIdentityStore.ack_links`)
-- Returns 1 when applied, 2 when this token was applied before (a retried call), 0 when another
-- writer changed a customer this batch read (the caller then decides the batch again).
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

local p, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local nkey, rkey, tkey = p .. ':n', p .. ':r', p .. ':tok:' .. token
if redis.call('EXISTS', tkey) == 1 then return 2 end
local CHUNK = 4000

local new = split(ARGV[4])
for s = 1, #new, CHUNK do
  local vals = redis.call('HMGET', nkey, unpack(new, s, math.min(s + CHUNK - 1, #new)))
  for i = 1, #vals do
    if vals[i] then return 0 end
  end
end
local checks = split(ARGV[5])
for i = 1, #checks, 2 do
  if (redis.call('HGET', rkey, checks[i]) or '') ~= checks[i + 1] then return 0 end
end

local moves = split(ARGV[6])
for i = 1, #moves, 2 do
  local src, dst = moves[i], moves[i + 1]
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
local outbox = split(ARGV[11])
if #outbox > 0 then
  local seq = redis.call('INCRBY', p .. ':mseq', #outbox / 2) - #outbox / 2
  for i = 2, #outbox, 2 do
    seq = seq + 1
    outbox[i] = seq .. ' ' .. outbox[i]
  end
  bulk('HSET', p .. ':mo', outbox)
end
if ARGV[12] ~= '' then redis.call('HSET', p .. ':lo', token, ARGV[12]) end
redis.call('SET', tkey, '1', 'EX', ttl)
return 1
