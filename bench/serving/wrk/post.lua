-- wrk script for the serving benchmarks: every request POSTs the same JSON
-- body, read from the file named after "--" (default: the Fashion-MNIST
-- sample request), with one more header when a second argument gives one
-- ("Name: value"), and at the end one line starting with "WRKJSON " gives
-- the figures as JSON (latencies in microseconds), for programs to read.
--
--   wrk -t2 -c32 -d15s --latency -s bench/serving/wrk/post.lua \
--       http://127.0.0.1:8000/v2/models/fmnist/infer -- examples/fashion-mnist/sample-request.json
--
-- Any answer other than 2xx/3xx counts in statusErrors (wrk's summary.errors.status).

local body_file = "examples/fashion-mnist/sample-request.json"

function init(args)
  if args[1] ~= nil then
    body_file = args[1]
  end
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] ~= nil then
    local name, value = args[2]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"durationUs":%d,"bytes":%d,"connectErrors":%d,"readErrors":%d,"writeErrors":%d,"statusErrors":%d,"timeouts":%d,' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
