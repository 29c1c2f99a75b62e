"""``scripts/bench``: start servers, drive load from separate processes, print and save figures.

Every figure stands next to its baseline from the same run:
  http     writes and reads of the service vs a plain Starlette endpoint (bench/baseline.py),
           both servers up and loaded in turns, so that drift hits both alike
  growth   append and read latency with 10 thousand vs 1 million events in the table
  fanout   one event to 1,000 subscribers (--fanout-large N for more): commit-to-receipt
           p50/p99; memory per idle subscription
  workers  PostgreSQL writes with 1 vs 2 worker processes; delivery across workers
  hooks    webhooks: writes with one active hook vs none; deliveries/s of a backlog;
           created->receipt p50/p99 (bench/hooks.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.auth import LocalIssuer
from app.settings import Settings
from bench import fanout, harness, hooks, http, load
from tests.servers import SERVED_PROTOCOL, WEBSOCKET_PROTOCOLS

SECTIONS = ("http", "growth", "fanout", "workers", "hooks")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small loads, under a minute")
    parser.add_argument("--only", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument(
        "--databases", nargs="*", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--fanout-large",
        type=int,
        metavar="N",
        help="also fan out to N subscribers on PostgreSQL (10,000 take about a minute on a "
        "2-core machine)",
    )
    parser.add_argument(
        "--seconds", type=int, help="length of each HTTP load (default 10, quick 2)"
    )
    parser.add_argument(
        "--websocket",
        choices=list(WEBSOCKET_PROTOCOLS),
        default=SERVED_PROTOCOL,
        help="uvicorn WebSocket protocol of the fan-out's server: the serving adapter's, as "
        "scripts/serve runs it (light, the default), or stock uvicorn's websockets-sansio",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="with --quick: the smallest loads (the smoke test)"
    )
    parser.add_argument("--json", type=Path, default=harness.ROOT / "bench-results" / "latest.json")
    args = parser.parse_args(argv)
    if not load.wrk_available():
        print("scripts/bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    seconds = args.seconds or (2 if args.quick else 10)
    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": _machine(),
        "quick": args.quick,
        "command": "scripts/bench " + " ".join(argv),
    }
    with tempfile.TemporaryDirectory(prefix="order-events-bench-") as tmp:
        workdir = Path(tmp)
        issuer = LocalIssuer.load_or_create(Settings(data_dir=workdir / "data"))
        token = issuer.mint(
            account_id=harness.ACCOUNT,
            scope="read:shopping write:shopping",
            subject="bench",
            ttl_seconds=3600,
        )
        if "http" in args.only:
            # --quick: two rounds of 1-s slices, not three, to stay well under a minute
            # (three made it 58-59 s on this machine).
            rounds = 2 if args.quick else 3
            report["http"] = [
                http.side_by_side(kind, workdir, token, seconds, args.connections, rounds)
                for kind in args.databases
            ]
        if "growth" in args.only:
            sizes = [1_000, 20_000] if args.quick else [10_000, 1_000_000]
            if args.tiny:
                sizes = [100, 1_000]
            # The 1M-vs-10k p99 ratio over 2-s slices ranged 0.94-1.64 between runs of the
            # same code; over 3-s slices (the whole load length) 0.85-1.24 (docs/benchmarks.md).
            growth_seconds = max(1, seconds // 2) if args.quick else seconds
            report["growth"] = [
                http.growth(kind, workdir, token, sizes, growth_seconds) for kind in args.databases
            ]
        if "fanout" in args.only:
            report["fanout"] = _fanout(args, workdir, token)
            _save(args.json, report)
        if "workers" in args.only and "postgres" in args.databases:
            report["workers"] = http.workers(workdir, token, seconds, args.connections)
            _save(args.json, report)
        if "hooks" in args.only:
            report["hooks"] = hooks.measure(
                args.databases,
                workdir,
                quick=args.quick,
                tiny=args.tiny,
                connections=args.connections,
            )
    report["seconds"] = round(time.monotonic() - started, 1)
    _save(args.json, report)
    print(render(report))
    if "hooks" in report:
        print(hooks.render(report["hooks"]))
    print(f"\nfigures written to {args.json}")
    return 0


def _save(path: Path, report: dict[str, Any]) -> None:
    """Writes what is measured so far, so a section that fails loses only itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _fanout(args: argparse.Namespace, workdir: Path, token: str) -> list[dict[str, Any]]:
    size = 10 if args.tiny else 100 if args.quick else 1000
    runs = [(kind, size) for kind in args.databases]
    if args.fanout_large:
        runs.append(("postgres" if "postgres" in args.databases else "sqlite", args.fanout_large))
    results = []
    for kind, size in runs:
        # Thousands of handshakes queue up: give each more than the default time to init.
        with (
            harness.database(kind, workdir) as url,
            harness.service(
                url, workdir, websocket=args.websocket, WS_INIT_TIMEOUT_SECONDS="300"
            ) as running,
        ):
            figures = fanout.measure(
                running.url,
                running.process.pid,
                token,
                size,
                events=5 if args.quick else 20,
                clients=2,
            )
        figures["database"] = kind
        figures["websocket"] = args.websocket
        results.append(figures)
    return results


def _machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("strawberry-graphql", "tortoise-orm", "uvicorn", "starlette", "asyncpg"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    postgres = (
        shutil.which("psql")
        and subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    )
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "postgres_client": postgres or None,
        "packages": versions,
    }


def render(report: dict[str, Any]) -> str:
    """The report as a plain-text table: each figure beside its baseline and their ratio."""
    lines = [f"{'figure':52} {'service':>12} {'baseline':>12} {'ratio':>7}"]

    def row(name: str, value: Any, base: Any = "", ratio: Any = "") -> None:
        lines.append(f"{name:52} {value!s:>12} {base!s:>12} {ratio!s:>7}")

    for run in report.get("http", []):
        db, s, b = run["database"], run["service"], run["baseline"]
        for phase in ("write", "read"):
            row(
                f"{db} {phase} requests/s ({run['connections']} conn.)",
                s[phase]["rps"],
                b[phase]["rps"],
                run[f"{phase}_ratio"],
            )
            row(f"{db} {phase} ratio in each round", " ".join(map(str, run[f"{phase}_ratios"])))
            for stat in ("p50_ms", "p99_ms"):
                row(
                    f"{db} {phase} {stat}",
                    s[phase][stat],
                    b[phase][stat],
                    round(s[phase][stat] / b[phase][stat], 2),
                )
            row(f"{db} {phase} failed requests", s[phase]["failed"] + s[phase]["errors_socket"])
    for run in report.get("growth", []):
        sizes = sorted(run["sizes"], key=int)
        small, large = run["sizes"][sizes[0]], run["sizes"][sizes[-1]]
        for phase in ("write", "read"):
            for stat in ("p50_ms", "p99_ms"):
                row(
                    f"{run['database']} {phase} {stat} at {int(sizes[-1]):,} vs {int(sizes[0]):,}"
                    " events",
                    large[phase][stat],
                    small[phase][stat],
                    run[f"{phase}_{stat}_ratio"],
                )
    for run in report.get("fanout", []):
        name = f"{run['database']} fan-out to {run['subscribers']:,}"
        if run.get("websocket", SERVED_PROTOCOL) != SERVED_PROTOCOL:
            name += f" ({run['websocket']} ws)"
        row(f"{name}: p50 ms commit->receipt", run["p50_ms"])
        row(f"{name}: p99 ms commit->receipt", run["p99_ms"])
        row(f"{name}: missing deliveries", run["missing"])
        if "server_cpu_us_per_delivery" in run:
            row(f"{name}: server CPU us per delivery", run["server_cpu_us_per_delivery"])
            row(f"{name}: ... of it in the kernel", run["server_system_cpu_us_per_delivery"])
            row(f"{name}: clients' CPU us per delivery", run["client_cpu_us_per_delivery"])
        row(f"{name}: KiB per idle subscription", run["kib_per_subscription"])
        row(f"{name}: server CPU us per new subscription", run["server_cpu_us_per_subscription"])
    if workers := report.get("workers"):
        row(
            "postgres write requests/s, 2 workers vs 1",
            workers["workers_2"]["rps"],
            workers["workers_1"]["rps"],
            workers["ratio_2_to_1"],
        )
        row(
            "postgres: events through any worker reach all",
            workers["cross_worker_delivery"]["all_received_in_order"],
        )
    lines.append(f"(run took {report['seconds']} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
