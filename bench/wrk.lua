-- wrk script for the tessera benchmark: sends the credential from the environment and prints
-- one JSON line with the figures the harness needs.
--   AUTH_HEADER  e.g. "Bearer eyJ..." (sent as Authorization)
--   COOKIE       e.g. "tessera_session=tss1...." (sent as Cookie)
--   METHOD, BODY, CONTENT_TYPE for POST benchmarks (login)
local auth = os.getenv("AUTH_HEADER")
local cookie = os.getenv("COOKIE")
local method = os.getenv("METHOD") or "GET"
local body = os.getenv("BODY")
local ctype = os.getenv("CONTENT_TYPE")
-- RANDOM_TOKENS=1: a different well-formed but invalid bearer token on every request (the
-- refusal path, and proof that refusals do not fill any cache)
local random_tokens = os.getenv("RANDOM_TOKENS") == "1"
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
  local headers = {}
  if random_tokens then
    headers["Authorization"] = "Bearer eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9." .. random_part(120) .. "." .. random_part(86)
  elseif auth and auth ~= "" then
    headers["Authorization"] = auth
  end
  if cookie and cookie ~= "" then headers["Cookie"] = cookie end
  if ctype and ctype ~= "" then headers["Content-Type"] = ctype end
  return wrk.format(method, nil, headers, body)
end

-- The summary line the bench scripts parse, from the file beside this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
