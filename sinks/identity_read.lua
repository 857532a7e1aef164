-- Read one batch's part of the identity graph in one atomic step.
-- ARGV[1] = key prefix, ARGV[2] = node keys joined by '\n', ARGV[3] = the customers the reader
-- has cached and may use, with the token of their record as cached: 'customer\ntoken\n...',
-- ARGV[4] = the batch's other keys, the cached ones ('' when not sent).
-- If any of those records is gone or carries another token (the reader's cache is stale):
-- returns 0 when ARGV[4] is '', else reads the keys of ARGV[2] and ARGV[4] as if nothing were
-- cached (the reader starts its cache over from this reply). Returns four values: three
-- '\n'-joined strings, the node values ('' when absent), the customer ids they point at (each
-- once, checked ones left out unless stale), those customers' records; and 1 if stale, else 0.
-- One string each keeps the client's encoding and parsing to a handful of values however
-- large the batch.
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
-- A record is JSON ending with the token of the commit that wrote it: `...,"<32 hex>"]`.
local checks = split(ARGV[3])
local stale = 0
for i = 1, #checks, 2 do
  local v = redis.call('HGET', rkey, checks[i])
  if not v or string.sub(v, -34, -3) ~= checks[i + 1] then stale = 1; break end
end
if stale == 1 then
  if ARGV[4] == '' then return 0 end
  local others = split(ARGV[4])
  for i = 1, #others do keys[#keys + 1] = others[i] end
else
  for i = 1, #checks, 2 do seen[checks[i]] = true end
end
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
return {table.concat(nodes, '\n'), table.concat(cids, '\n'), table.concat(roots, '\n'), stale}
