-- Read one batch's part of the identity graph in one atomic step.
-- ARGV[1] = key prefix, ARGV[2] = node keys joined by '\n'.
-- Returns three '\n'-joined strings: the node values ('' when absent), the customer ids they
-- point at (each once), and those customers' records. One string each keeps the client's
-- encoding and parsing to a handful of values however large the batch.
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

local p = ARGV[1]
local nkey, rkey = p .. ':n', p .. ':r'
local keys = split(ARGV[2])
local CHUNK = 4000
local nodes, cids, seen = {}, {}, {}
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
