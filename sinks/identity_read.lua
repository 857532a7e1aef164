-- Read one batch's part of the identity graph in one atomic step.
-- ARGV[1] = key prefix, ARGV[2..] = node keys.
-- Returns {node values (nil when absent), customer ids, their root records}.
local p = ARGV[1]
local nkey, rkey = p .. ':n', p .. ':r'
local CHUNK = 4000
local nodes = {}
for s = 2, #ARGV, CHUNK do
  local vals = redis.call('HMGET', nkey, unpack(ARGV, s, math.min(s + CHUNK - 1, #ARGV)))
  for i = 1, #vals do nodes[#nodes + 1] = vals[i] end
end
local cids, seen = {}, {}
for i = 1, #nodes do
  local v = nodes[i]
  if v then
    local cid = string.sub(v, 1, string.find(v, '|', 1, true) - 1)
    if not seen[cid] then
      seen[cid] = true
      cids[#cids + 1] = cid
    end
  end
end
local roots = {}
for s = 1, #cids, CHUNK do
  local vals = redis.call('HMGET', rkey, unpack(cids, s, math.min(s + CHUNK - 1, #cids)))
  for i = 1, #vals do roots[#roots + 1] = vals[i] end
end
return {nodes, cids, roots}
