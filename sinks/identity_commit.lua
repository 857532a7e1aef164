-- Commit one batch's identity decisions atomically, if nothing it read has changed since.
-- ARGV: prefix, token, token_ttl_s, then nine sections, each one string joined by '\n', then
-- the chain and a flag:
--   4 new keys     that must still be absent
--   5 root checks  customer, token ...   every customer the batch read or may write, with the
--                  token its record carried when read or last written by this worker (a
--                  record is JSON ending with the token of the commit that wrote it:
--                  `...,"<32 hex>"]`); a record gone or with another token fails the commit.
--                  Skipped when the chain holds (13).
--   6 moves        from customer, to customer ...   replayed in order on the full member sets
--   7 node sets    key, value ...
--   8 member adds  customer, key ...   (pairs of one customer together: one SADD per run)
--   9 root sets    customer, record ...
--  10 root deletes customer ...
--  11 merge outbox  loser|evidence event, merge record (JSON) ...   kept until the ingest agent has produced
--                   them (`RedisIdentityStore.ack_merges`), so a crash cannot lose a merge; each is
--                   stored as '<seq> <JSON>', seq from the counter P:mseq: the global commit order
--                   of merges, in which related merges must reach the partitions
--  12 links outbox  the batch's new identity links (JSON), kept under the token until the ingest
--                   agent has written their rows (`RedisIdentityStore.ack_links`)
--  13 chain         the token of this worker's last commit, when its whole cache was current
--                   then ('' if none). P:last holds the token of the last commit applied (every
--                   commit sets it, in the same atomic step as its writes), so if it still
--                   holds this one, nothing has written the graph since and the root checks
--                   are not needed: the chain holds.
--  14 unchecked     '1' when the root checks were left out (sent with a chain): if the chain
--                   does not hold, return 3 and write nothing (the caller sends the checks)
-- Returns {status, seq}: status 1 when applied after the root checks, 4 when applied because the
-- chain held, 2 when this token was applied before (a retried call), 3 (see 14), 0 when another
-- writer changed a customer this batch read or took an identifier it took as new (the caller
-- then decides the batch again). seq: the merges of 11 are numbered seq + 1, seq + 2, ... (kept
-- under the token, so a retried call gets the numbers of the call that applied).
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
local done = redis.call('GET', tkey)
if done then return {2, tonumber(done) or 0} end
local CHUNK = 4000

local new = split(ARGV[4])
for s = 1, #new, CHUNK do
  local vals = redis.call('HMGET', nkey, unpack(new, s, math.min(s + CHUNK - 1, #new)))
  for i = 1, #vals do
    if vals[i] then return {0, 0} end
  end
end
local held = ARGV[13] ~= '' and redis.call('GET', p .. ':last') == ARGV[13]
if not held then
  if ARGV[14] == '1' then return {3, 0} end
  local checks = split(ARGV[5])
  local cids = {}
  for i = 1, #checks, 2 do cids[#cids + 1] = checks[i] end
  for s = 1, #cids, CHUNK do
    local vals = redis.call('HMGET', rkey, unpack(cids, s, math.min(s + CHUNK - 1, #cids)))
    for i = 1, #vals do
      local v = vals[i]
      if not v or string.sub(v, -34, -3) ~= checks[2 * (s + i - 1)] then return {0, 0} end
    end
  end
end

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
    -- the moved members only: SUNIONSTORE would copy the whole (growing) target set
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
local i = 1
while i <= #adds do  -- one SADD per run of the same customer (the client sends them grouped)
  local cid, keys = adds[i], {}
  while i <= #adds and adds[i] == cid and #keys < CHUNK do
    keys[#keys + 1] = adds[i + 1]
    i = i + 2
  end
  redis.call('SADD', p .. ':m:' .. cid, unpack(keys))
end
bulk('HSET', rkey, split(ARGV[9]))
bulk('HDEL', rkey, split(ARGV[10]))
local outbox = split(ARGV[11])
local base = 0
if #outbox > 0 then
  base = redis.call('INCRBY', p .. ':mseq', #outbox / 2) - #outbox / 2
  local seq = base
  for i = 2, #outbox, 2 do
    seq = seq + 1
    outbox[i] = seq .. ' ' .. outbox[i]
  end
  bulk('HSET', p .. ':mo', outbox)
end
if ARGV[12] ~= '' then redis.call('HSET', p .. ':lo', token, ARGV[12]) end
redis.call('SET', tkey, base, 'EX', ttl)
redis.call('SET', p .. ':last', token)
if held then return {4, base} end
return {1, base}
