-- Read one batch's part of the identity graph in one atomic step.
-- ARGV[1] = key prefix, ARGV[2] = node keys joined by '\n', ARGV[3] (optional) = the customers
-- the reader has cached, with their tokens: 'customer\ntoken\n...'.
-- Returns 0 if a cached customer's record no longer ends with its token (the cache is stale).
-- Otherwise three '\n'-joined strings: the node values ('' when absent), the customer ids they
-- point at (each once, cached ones left out), and those customers' records. One string each
-- keeps the client's encoding and parsing to a handful of values however large the batch.
-- (split, tokens_unchanged and CHUNK come from identity_lib.lua.)
local p = ARGV[1]
local nkey, rkey = p .. ':n', p .. ':r'
local keys = split(ARGV[2])
local nodes, cids, seen = {}, {}, {}
local checks = split(ARGV[3] or '')
if not tokens_unchanged(rkey, checks) then return 0 end
for i = 1, #checks, 2 do seen[checks[i]] = true end
for s = 1, #keys, CHUNK do
  local vals = redis.call('HMGET', nkey, unpack(keys, s, math.min(s + CHUNK - 1, #keys)))
  for i = 1, #vals do
    local v = vals[i]
    if v then
      nodes[#nodes + 1] = v
      local cid = string.sub(v, 1, string.find(v, '|', 1, true) - 1)
      if not seen[cid] then
        seen[cid] = true
        cids[#cids + 1] = cid
      end
    else
      nodes[#nodes + 1] = ''
    end
  end
end
local roots = {}
for s = 1, #cids, CHUNK do
  local vals = redis.call('HMGET', rkey, unpack(cids, s, math.min(s + CHUNK - 1, #cids)))
  for i = 1, #vals do roots[#roots + 1] = vals[i] or '' end
end
return {table.concat(nodes, '\n'), table.concat(cids, '\n'), table.concat(roots, '\n')}
