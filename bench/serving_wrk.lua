-- wrk script for bench/serving_benchmark.py: rotate over real user and video ids.
--
--   SERVING_BENCH_API_KEY=<key> wrk -t1 -c8 -d20s --latency -s bench/serving_wrk.lua \
--       http://127.0.0.1:8000 -- <ids file> '<path template>'
--
-- The ids file has one "<user_id> <video_id>" pair per line. The path template may
-- hold {uid} and {vid}, e.g. /api/v1/recommendations/similar/{vid}?limit=10. Every
-- request carries X-API-Key (from $SERVING_BENCH_API_KEY, so the key is not on the
-- command line) and X-User-Id. All requests are formatted once in init(), so request()
-- costs one table index (wrk's advice for cheap scripts). done() prints one line,
-- "WRKJSON {...}", with wrk's own counts and latency percentiles in microseconds.

local requests_ = {}
local n = 0
local i = 0
local threads = 0

-- Runs in wrk's main Lua state, once per thread before init(): a thread index each.
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end

function init(args)
  local ids_file, template = args[1], args[2]
  if ids_file == nil or template == nil then
    error("usage: wrk ... -s serving_wrk.lua URL -- <ids file> <path template>")
  end
  local key = os.getenv("SERVING_BENCH_API_KEY") or ""
  local f = assert(io.open(ids_file, "r"))
  for line in f:lines() do
    local uid, vid = line:match("^(%S+)%s+(%S+)")
    if uid ~= nil then
      local path = template:gsub("{uid}", uid):gsub("{vid}", vid)
      local headers = { ["X-API-Key"] = key, ["X-User-Id"] = uid }
      n = n + 1
      requests_[n] = wrk.format("GET", path, headers)
    end
  end
  f:close()
  if n == 0 then
    error("no ids in " .. ids_file)
  end
  -- Threads start at different offsets so that they do not ask for the same ids.
  i = ((tonumber(index) or 0) * 7919) % n
end

function request()
  i = i % n + 1
  return requests_[i]
end

function done(summary, latency, _requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,' ..
    '"p90":%d,"p99":%d,"p99.9":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
