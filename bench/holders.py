"""Clients that hold connections instead of making requests (issue 13, item 2), beside a
normal client: its p50/p99 and the server's memory, with the limits of ``serving.http`` and
without them (stock uvicorn ``httptools``).

    .venv/bin/python -m bench.holders [--attack slowloris|big-header|idle|short-body]
        [--connections 1000] [--seconds 15] [--rate 40] [--stock]

Starts the service on loopback (SQLite) as ``scripts/serve`` does, or with ``--stock`` with
uvicorn's own HTTP protocol, stores a few events, and runs two phases of ``--seconds`` each:
the normal client alone, then beside ``--connections`` token-less connections held open by a
process of their own, which opens a new one whenever the server closes one:

- ``slowloris``: a request line, then a header line every second, never the end of them;
- ``big-header``: a header whose value never ends, 16 KiB every 50 ms, up to 20 MB each;
- ``idle``: nothing at all;
- ``short-body``: headers declaring a body of 1,000 bytes, then 10 of them.

Reported: the normal client's latency in each phase, the server's resident memory (at the
start of the attack, its peak, and at the end), and how many held connections the server
closed and how long they had lived. The time limits are those of the settings (10 s for
headers and bodies by default); ``--seconds`` longer than them shows them act.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app.auth import LocalIssuer
from app.settings import Settings
from bench import harness
from bench.attack import CREATE, ORDER, Connection, normal_client
from bench.fanout import percentile

ATTACKS = ("slowloris", "big-header", "idle", "short-body")
BIG_HEADER_CHUNK = b"a" * 16384
BIG_HEADER_LIMIT = 20 * 1024 * 1024


async def hold(port: int, kind: str) -> float:
    """One held connection, until the server closes it: how long it lived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        if kind == "slowloris":
            writer.write(b"GET /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            line = 0
            while not reader.at_eof():
                await asyncio.sleep(1)
                line += 1
                writer.write(b"x-%d: %d\r\n" % (line, line))
                await writer.drain()
        elif kind == "big-header":
            writer.write(b"GET /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
            sent = 0
            while not reader.at_eof() and sent < BIG_HEADER_LIMIT:
                writer.write(BIG_HEADER_CHUNK)
                sent += len(BIG_HEADER_CHUNK)
                await writer.drain()
                await asyncio.sleep(0.05)
            await reader.read()
        elif kind == "short-body":
            writer.write(
                b"POST /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json"
                b'\r\ncontent-length: 1000\r\n\r\n{"query":'
            )
            await reader.read()
        else:
            await reader.read()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return time.monotonic() - opened


async def attack(port: int, kind: str, connections: int, seconds: float) -> dict[str, Any]:
    """``connections`` held connections for ``seconds``, each opened again when the server
    closes it; says "ready" on stdout once they are all open."""
    deadline = time.monotonic() + seconds
    lifetimes: list[float] = []
    refused = 0

    async def holder() -> None:
        nonlocal refused
        while time.monotonic() < deadline:
            try:
                task = asyncio.ensure_future(hold(port, kind))
                done, _ = await asyncio.wait([task], timeout=deadline - time.monotonic())
            except OSError:
                refused += 1
                await asyncio.sleep(0.1)
                continue
            if not done:
                task.cancel()
                return
            lifetimes.append(task.result())

    holders = [asyncio.ensure_future(holder()) for _ in range(connections)]
    await asyncio.sleep(1)
    print("ready", flush=True)
    await asyncio.gather(*holders, return_exceptions=True)
    return {
        "closed_by_server": len(lifetimes),
        "lifetime_p50_s": round(percentile(lifetimes, 0.5), 2) if lifetimes else None,
        "lifetime_max_s": round(max(lifetimes), 2) if lifetimes else None,
        "connect_errors": refused,
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class MemoryWatch:
    """The server's largest resident set while the ``with`` block runs, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> MemoryWatch:
        self.peak = rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def measure(
    kind: str, connections: int, seconds: float, rate: float, stock: bool
) -> dict[str, Any]:
    uvicorn_args = ("--http", "httptools") if stock else ()
    with tempfile.TemporaryDirectory(prefix="order-events-holders-") as tmp:
        workdir = Path(tmp)
        token = LocalIssuer.load_or_create(Settings(data_dir=workdir / "data")).mint(
            account_id=harness.ACCOUNT, scope="read:shopping write:shopping", subject="bench"
        )
        with (
            harness.database("sqlite", workdir) as url,
            harness.service(url, workdir, *uvicorn_args) as server,
        ):
            asyncio.run(_store_events(server.port, token))
            pid = server.process.pid
            report: dict[str, Any] = {"rss_start_mib": round(rss_mib(pid), 1)}
            report["quiet"] = asyncio.run(normal_client(server.port, token, seconds, rate))
            holders = ["--holder", str(server.port), "--attack", kind]
            holders += ["--connections", str(connections), "--seconds", str(seconds + 2)]
            attacker = subprocess.Popen(
                [sys.executable, "-m", "bench.holders", *holders],
                cwd=harness.ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert attacker.stdout is not None
                if attacker.stdout.readline().strip() != "ready":
                    raise RuntimeError("the holders did not start")
                with MemoryWatch(pid) as memory:
                    report["attack"] = asyncio.run(normal_client(server.port, token, seconds, rate))
                    output, _ = attacker.communicate(timeout=seconds + 60)
                report["rss_peak_mib"] = round(memory.peak, 1)
                report["holders"] = json.loads(output)
                time.sleep(1)
                report["rss_end_mib"] = round(rss_mib(pid), 1)
            finally:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
    return report


async def _store_events(port: int, token: str) -> None:
    connection = await Connection.open(port)
    body = json.dumps({"query": CREATE, "variables": {"o": ORDER}}).encode()
    for _ in range(20):
        if await connection.post(body, token) != 200:
            raise RuntimeError("could not store the normal client's events")
    connection.close()


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    server = "stock uvicorn httptools" if args.stock else "served as scripts/serve does"
    holders = report["holders"]
    lines = [
        f"{args.connections} {args.attack} connections beside one client reading "
        f"{args.rate:g}/s; {args.seconds:g} s per phase; {server}",
        f"{'phase':8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests':>9}  statuses",
    ]
    for phase in ("quiet", "attack"):
        figures = report[phase]
        lines.append(
            f"{phase:8} {figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f} "
            f"{figures['max_ms']:8.2f} {figures['requests']:9d}  {figures['statuses']}"
        )
    lines.append(
        f"server RSS MiB: {report['rss_start_mib']} at start, {report['rss_peak_mib']} at "
        f"peak under attack, {report['rss_end_mib']} after"
    )
    lines.append(
        f"held connections closed by the server: {holders['closed_by_server']} (lifetime "
        f"p50 {holders['lifetime_p50_s']} s, max {holders['lifetime_max_s']} s); "
        f"connect errors {holders['connect_errors']}; "
        f"p50 ratio {report['attack']['p50_ms'] / report['quiet']['p50_ms']:.2f}, "
        f"p99 ratio {report['attack']['p99_ms'] / report['quiet']['p99_ms']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.holders", description=__doc__)
    parser.add_argument("--attack", choices=ATTACKS, default="slowloris")
    parser.add_argument("--connections", type=int, default=1000, help="held connections")
    parser.add_argument("--seconds", type=float, default=15, help="length of each phase")
    parser.add_argument("--rate", type=float, default=40, help="normal requests a second")
    parser.add_argument("--stock", action="store_true", help="serve with uvicorn's httptools")
    parser.add_argument("--holder", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 120 or not 0 < args.connections <= 5000:
        parser.error("bounded: --seconds up to 120, --connections up to 5000")
    if args.holder is not None:
        result = asyncio.run(attack(args.holder, args.attack, args.connections, args.seconds))
        print(json.dumps(result))
        return 0
    report = measure(args.attack, args.connections, args.seconds, args.rate, args.stock)
    print(render(report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
