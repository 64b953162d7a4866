-- wrk script for the tessera benchmark: sends the credential from the environment and prints
-- one JSON line with the figures the harness needs.
--   AUTH_HEADER  e.g. "Bearer eyJ..." (sent as Authorization)
--   COOKIE       e.g. "tessera_session=tss1...." (sent as Cookie)
--   METHOD, BODY, CONTENT_TYPE for POST benchmarks (login)
--
-- The request is static: wrk builds it once and writes the same bytes on every request. A
-- script that defines `request()` makes wrk call into Lua and format the request anew each
-- time: against the baseline at 64 connections that cost wrk 7.7-8.0 us of CPU per request
-- instead of 6.1-6.9, CPU taken from the two cores it shares with the servers it measures.
local function set(name, value)
  if value and value ~= "" then wrk.headers[name] = value end
end
wrk.method = os.getenv("METHOD") or "GET"
wrk.body = os.getenv("BODY")
set("Authorization", os.getenv("AUTH_HEADER"))
set("Cookie", os.getenv("COOKIE"))
set("Content-Type", os.getenv("CONTENT_TYPE"))

-- RANDOM_TOKENS=1: a different well-formed but invalid bearer token on every request (the
-- refusal path, and proof that refusals do not fill any cache). Only then is the request
-- made per call.
if os.getenv("RANDOM_TOKENS") == "1" then
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  local function random_part(n)
    local t = {}
    for i = 1, n do
      local k = math.random(1, #alphabet)
      t[i] = alphabet:sub(k, k)
    end
    return table.concat(t)
  end
  function request()
    wrk.headers["Authorization"] = "Bearer eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9." .. random_part(120) .. "." .. random_part(86)
    return wrk.format()
  end
end

-- The summary line the bench scripts parse, from the file beside this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
