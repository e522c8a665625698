-- wrk script: each request GETs a path built from a random id of a file.
-- usage: wrk ... -s bench/random_path.lua URL -- '/api/v1/items/%s' ids.txt
local ids = {}
local fmt = "/%s"

function init(args)
  fmt = args[1]
  for line in io.lines(args[2]) do
    ids[#ids + 1] = line
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  return wrk.format("GET", string.format(fmt, ids[math.random(#ids)]))
end
