"""The Lua scripts the worker runs inside Redis: each one is atomic, so what it checks still holds when it writes.

PUBLISH (one call per batch) validates every argument and every key's type first and writes nothing if
anything is off; then, for each frame still pending for this consumer (the fence), adds its event, its dead
letter if any, and acks it. Then it tracks each camera's `seq` (confirming gaps once across all workers of the
group) and trims the frames stream up to the first entry some group still needs. Redis never rolls back a
script that fails half way, hence the validation before the first write; and the `#!lua` shebang makes Redis
refuse the whole call, before it runs, when it is out of memory.

CLAIM hands this consumer the pending frames of one consumer whose heartbeat key has expired; two workers
claiming at once cannot both get the same frames (the second finds them owned by the first).

Both declare every key they touch in KEYS (the caller derives them with `inspector.io.keys`: the camera state
of the batch's cameras, the heartbeats of the consumers that hold frames), and all of them carry the line's hash
tag: Redis Cluster routes each call by its keys and refuses a script that strays from their slot.

Gap tracking, per (group, camera): `w` is the highest seq such that every seq up to it was seen or confirmed
missing. Published seqs above w wait in a sorted set with their entry ids. The smallest waiting seq s advances w
when s = w + 1, or, when s > w + 1, once no entry older than s's entry is pending in the group: frames reach the
stream in seq order per camera and the group delivers in stream order, so a missing seq can no longer arrive and
is a real gap, reported by exactly one worker. A seq at or below w (camera restart) or a jump over
camera.max_seq_jump is a reset, not a gap. More than MAX_WAITING_SEQS waiting seqs (a frame pending for ages)
confirm the head's gap anyway, so the set stays bounded. The in-memory twin (`io.memory.SeqTracker`) applies the
same rule with the same constants; tests/test_contract.py runs both on each case.

The numbers the Lua shares with Python (MAX_WAITING_SEQS, protocol.MAX_DEAD_ITEMS) are written into its text
from the Python constants: `@NAME@` markers, replaced once at import.
"""

from inspector.protocol import MAX_DEAD_ITEMS

MAX_WAITING_SEQS = 10_000  # per camera: more published seqs waiting above w force the head's gap to be confirmed


def _filled(template: str, **values: int) -> str:
    """The script with each `@NAME@` replaced by its value; a marker left over is a bug here, not at run time."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", str(int(value)))
    if "@" in template:
        raise AssertionError(f"Lua script keeps an unfilled marker near {template[template.index('@'):][:40]!r}")
    return template


PUBLISH = _filled(r"""#!lua
-- KEYS: frames, events, dead, then per camera of the batch its state hash and its seen sorted set
-- ARGV: group, consumer, events_maxlen, dead_maxlen, trim (all_groups|own_group|off), retention_ms,
--       camera_ttl_s, max_jump, acked_flag (1: XTRIM ... ACKED, Redis 8.2+), ncam, ncam camera names (in the
--       order of their KEYS), n, then n outcomes: id, event, camera, seq, ndead, ndead dead-letter items
local group, consumer = ARGV[1], ARGV[2]
local events_maxlen, dead_maxlen = tonumber(ARGV[3]), tonumber(ARGV[4])
local trim, retention_ms = ARGV[5], tonumber(ARGV[6])
local camera_ttl, max_jump = tonumber(ARGV[7]), tonumber(ARGV[8])
local acked_flag, ncam = ARGV[9], tonumber(ARGV[10])

-- 1. validate: no write happens unless every argument and key is usable
if not (events_maxlen and dead_maxlen and retention_ms and camera_ttl and max_jump and ncam)
    or #KEYS ~= 3 + 2 * ncam then
  return redis.error_reply('ERR publish: malformed header arguments')
end
local camera_keys = {}  -- camera name -> {state, seen}: declared in KEYS, so Cluster routes and checks them
for j = 1, ncam do camera_keys[ARGV[10 + j]] = {KEYS[2 + 2 * j], KEYS[3 + 2 * j]} end
local n = tonumber(ARGV[11 + ncam])
if not n then return redis.error_reply('ERR publish: malformed header arguments') end
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE publish: key ' .. key .. ' holds a ' .. t .. ', not a stream')
  end
end
local outcomes, i = {}, 12 + ncam
for k = 1, n do
  local ndead = tonumber(ARGV[i + 4])
  local seq = tonumber(ARGV[i + 3])
  if not ndead or not seq or ndead < 0 or ndead > @MAX_DEAD_ITEMS@ or ndead % 2 ~= 0 or i + 4 + ndead > #ARGV then
    return redis.error_reply('ERR publish: malformed outcome ' .. k)
  end
  local fenced = #redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1, consumer) == 1
  outcomes[k] = {id = ARGV[i], event = ARGV[i + 1], camera = ARGV[i + 2], seq = seq, first = i + 5,
                 ndead = ndead, fenced = fenced}
  i = i + 5 + ndead
end
if i ~= #ARGV + 1 then
  return redis.error_reply('ERR publish: ' .. (#ARGV + 1 - i) .. ' trailing arguments')
end

-- 2. events, dead letters, acks
local done, cameras = {}, {}
for k, o in ipairs(outcomes) do
  if o.fenced then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', events_maxlen, '*', 'e', o.event)
    if o.ndead > 0 then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', dead_maxlen, '*', unpack(ARGV, o.first, o.first + o.ndead - 1))
    end
    redis.call('XACK', KEYS[1], group, o.id)
    if o.camera ~= '' and o.seq >= 0 and camera_keys[o.camera] then
      if not cameras[o.camera] then cameras[o.camera] = {} end
      table.insert(cameras[o.camera], o)
    end
    done[k] = 1
  else
    done[k] = 0
  end
end

local function parse_id(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(sq)}
end
local function older(a, b)  -- stream id a < b
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

-- 3. sequence gaps, per camera of this group
local reports = {}
local first_pending = nil
local summary = redis.call('XPENDING', KEYS[1], group)
if summary[1] > 0 then first_pending = parse_id(summary[2]) end
local function settled(entry_id)  -- nothing older than entry_id is still pending in the group
  return first_pending == nil or not older(first_pending, parse_id(entry_id))
end
for camera, list in pairs(cameras) do
  local state, seen = camera_keys[camera][1], camera_keys[camera][2]
  for _, o in ipairs(list) do  -- the member is the entry id zero-padded: equal seqs then sort oldest entry first
    local p = parse_id(o.id)
    redis.call('ZADD', seen, o.seq, string.format('%020.0f-%020.0f', p[1], p[2]))
  end
  local w = tonumber(redis.call('HGET', state, 'w'))
  while true do
    local head = redis.call('ZRANGE', seen, 0, 0, 'WITHSCORES')
    if #head == 0 then break end
    local id, s = head[1], tonumber(head[2])
    if w == nil then
      if not settled(id) then break end  -- a first frame: wait until nothing older is in flight
      w = s - 1
    end
    if s == w + 1 or s == w then  -- the next frame, or the same seq sent twice
      w = math.max(w, s)
    elseif s < w or s - w - 1 > max_jump then
      redis.call('HINCRBY', state, 'resets', 1)
      table.insert(reports, {camera, w, s, 'reset'})
      w = s
    elseif settled(id) or redis.call('ZCARD', seen) > @MAX_WAITING_SEQS@ then
      redis.call('HINCRBY', state, 'gaps', s - w - 1)
      redis.call('HINCRBY', state, 'gap_runs', 1)
      table.insert(reports, {camera, w, s, 'gap'})
      w = s
    else
      break
    end
    redis.call('ZREM', seen, id)
  end
  if w ~= nil then redis.call('HSET', state, 'w', string.format('%.0f', w)) end
  redis.call('EXPIRE', state, camera_ttl)
  redis.call('EXPIRE', seen, camera_ttl)
end

-- 4. trim the frames stream below the first entry any group (or ours) still needs: a group needs its first
--    pending entry, or, with nothing pending, whatever comes after its last-delivered-id
local trimmed = 0
if trim ~= 'off' then
  local cut = nil
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local g = {}
    for j = 1, #info, 2 do g[info[j]] = info[j + 1] end
    if trim == 'all_groups' or g['name'] == group then
      local need
      if g['pending'] > 0 then
        need = parse_id(redis.call('XPENDING', KEYS[1], g['name'])[2])
      else
        need = parse_id(g['last-delivered-id'])
        need[2] = need[2] + 1
      end
      if cut == nil or older(need, cut) then cut = need end
    end
  end
  if cut ~= nil and retention_ms > 0 then
    local now = redis.call('TIME')
    local keep = {tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - retention_ms, 0}
    if older(keep, cut) then cut = keep end
  end
  if cut ~= nil and cut[1] >= 0 then
    local minid = string.format('%.0f-%.0f', cut[1], cut[2])
    if acked_flag == '1' then
      trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid, 'ACKED')
    else
      trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid)
    end
  end
end

local flat = {}
for _, r in ipairs(reports) do
  table.insert(flat, r[1]); table.insert(flat, string.format('%.0f', r[2]))
  table.insert(flat, string.format('%.0f', r[3])); table.insert(flat, r[4])
end
return {done, flat, trimmed}
""", MAX_DEAD_ITEMS=MAX_DEAD_ITEMS, MAX_WAITING_SEQS=MAX_WAITING_SEQS)

CLAIM = r"""#!lua
-- KEYS: frames, then the heartbeat key of each candidate. ARGV: group, me, count, then each candidate's name.
-- The pending frames (up to count) of the first candidate that still has some and whose heartbeat key is gone.
local group, me, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
for k = 2, #KEYS do
  local name = ARGV[k + 2]
  if name ~= me and redis.call('EXISTS', KEYS[k]) == 0 then
    local entries = redis.call('XPENDING', KEYS[1], group, '-', '+', count, name)
    if #entries > 0 then
      local ids, deliveries = {}, {}
      for _, e in ipairs(entries) do
        table.insert(ids, e[1])
        deliveries[e[1]] = e[4] + 1
      end
      local claimed = redis.call('XCLAIM', KEYS[1], group, me, 0, unpack(ids))
      local out = {}
      for _, entry in ipairs(claimed) do
        table.insert(out, {entry[1], entry[2], deliveries[entry[1]]})
      end
      return {name, out, #ids - #claimed}
    end
  end
end
return false
"""
