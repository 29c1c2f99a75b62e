"""HTTP load from a separate process: wrk, with a Lua script that varies the order ids and
reports its figures (and any GraphQL errors it saw) as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

LUA = r"""
-- Globals, so that done() can read each thread's count with thread:get().
counter = 0
errors = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
local orders = %(orders)d
local method = "%(method)s"
local path_template = "%(path)s"
local body_template = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(headers)s

request = function()
  counter = counter + 1
  local order = "order-" .. (counter %% orders)
  local path = string.gsub(path_template, "{order}", order)
  local body = nil
  if body_template ~= nil then body = string.gsub(body_template, "{order}", order) end
  return wrk.format(method, path, nil, body)
end

response = function(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then errors = errors + 1 end
end

done = function(summary, latency, requests)
  local graphql_errors = 0
  for _, thread in ipairs(threads) do graphql_errors = graphql_errors + thread:get("errors") end
  io.write("WRK_JSON ")
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors_socket": %%d, "failed": %%d,' ..
    ' "p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    graphql_errors,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    *,
    method: str,
    path: str,
    body: str | None,
    headers: dict[str, str],
    orders: int,
    connections: int,
    seconds: int,
    threads: int = 1,
) -> dict[str, Any]:
    """Runs wrk for ``seconds``; ``{order}`` in ``path`` and ``body`` cycles over ``orders``."""
    lua = LUA % {
        "orders": orders,
        "method": method,
        "path": path,
        "body": "nil" if body is None else json.dumps(body),
        "headers": "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        output = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    figures: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    figures["rps"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    return figures
