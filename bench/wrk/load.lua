-- One wrk script for every HTTP load of the benchmark; bench/load.py sets the environment.
--   BENCH_METHOD   GET, POST or PUT
--   BENCH_PATH     the path of a fixed request, or the path prefix for the modes below
--   BENCH_BODY     request body (sent with BENCH_CTYPE)
--   BENCH_MODE     fixed | distinct (path .. tag-thread-counter) | random (path .. k%07d)
--                  | list (path .. after=k%07d) ; random/list pick among BENCH_ROWS names
--   BENCH_OUT      where done() writes its JSON summary
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY")
local ctype = os.getenv("BENCH_CTYPE")
local mode = os.getenv("BENCH_MODE") or "fixed"
local rows = tonumber(os.getenv("BENCH_ROWS") or "1000")
local tag = os.getenv("BENCH_TAG") or "t"

local headers = {}
if ctype and ctype ~= "" then
  headers["Content-Type"] = ctype
end
if body == "" then
  body = nil
end

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  counter = 0
  wrk.method = method
  wrk.body = body
  for k, v in pairs(headers) do
    wrk.headers[k] = v
  end
  if mode == "fixed" then
    wrk.path = path
  end
end

if mode ~= "fixed" then
  function request()
    counter = counter + 1
    local p
    if mode == "distinct" then
      p = path .. tag .. "-" .. id .. "-" .. counter
    elseif mode == "random" then
      p = path .. string.format("k%07d", math.random(rows))
    else
      p = path .. string.format("k%07d", math.random(rows))
    end
    return wrk.format(method, p, headers, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
  out:close()
end
