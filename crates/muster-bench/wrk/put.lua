-- wrk script: PUT a new instance of service "reg" per request, ids unique
-- per wrk thread (t<thread>-<n>); the body is muster-bench's register body.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(_)
  n = 0
end

function request()
  n = n + 1
  local path = "/v1/services/reg/instances/" .. (prefix or "t") .. tid .. "-" .. n
  return wrk.format("PUT", path, { ["Content-Type"] = "application/json" },
    '{"address":"10.0.0.1","port":8080,"tags":["a","b"],"meta":{"k":"v","z":"y"}}')
end
