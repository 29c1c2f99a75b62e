"""``scripts/bench``: start servers, drive load from separate processes, print and save figures.

scripts/bench [--quick] [--only NAME ...] [--databases sqlite postgres] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.auth import LocalIssuer
from app.settings import Settings
from bench import fanout, load
from tests.servers import Server, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated database of ``kind`` for one benchmark; dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite://{workdir}/bench-{time.monotonic_ns()}.sqlite3"
        _migrate(url)
        yield url
        return
    name = f"order_events_bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    _psql(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        _migrate(url)
        yield url
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )


def _psql(sql: str) -> None:
    admin = POSTGRES_URL.replace("postgres://", "postgresql://", 1)
    subprocess.run(["psql", admin, "-q", "-c", sql], check=True, capture_output=True)


@contextmanager
def server(url: str, workdir: Path, **env: str) -> Iterator[Server]:
    process_env = {
        "DATABASE_URL": url,
        "DATA_DIR": str(workdir / "data"),
        "GRAPHIQL": "false",
        "WS_PING_INTERVAL_SECONDS": "0",
        **env,
    }
    running = start_server(process_env, workdir / f"server-{time.monotonic_ns()}.log")
    try:
        yield running
    finally:
        stop_server(running)


SERVICE_WRITE = json.dumps(
    {
        "query": 'mutation($o: ID!) { createOrderEvent(accountId: "T12345678", orderId: $o, '
        'event: {service: "kitchen", serviceStatus: "ready_for_pickup", '
        'description: "food prepared"}) { id version createdAt } }',
        "variables": {"o": "{order}"},
    }
)
BASELINE_WRITE = json.dumps(
    {
        "accountId": "T12345678",
        "orderId": "{order}",
        "service": "kitchen",
        "serviceStatus": "ready_for_pickup",
        "description": "food prepared",
    }
)
SERVICE_READ_PATH = (
    "/graphql?query=query(%24o%3AID!)%7BorderEvents(accountId%3A%22T12345678%22%2C"
    "orderId%3A%24o%2Cfirst%3A20)%7Bstate%20events%7Bid%20version%20service%20"
    "serviceStatus%20createdAt%7D%7D%7D&variables=%7B%22o%22%3A%22{order}%22%7D"
)
BASELINE_READ_PATH = "/accounts/T12345678/orders/{order}/events?first=20"


@contextmanager
def baseline_server(url: str, workdir: Path) -> Iterator[Server]:
    running = start_server(
        {"DATABASE_URL": url},
        workdir / f"baseline-{time.monotonic_ns()}.log",
        factory="bench.baseline:create_app",
    )
    try:
        yield running
    finally:
        stop_server(running)


def _write_and_read(
    target: Server, *, service: bool, token: str, seconds: int, connections: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if service else {}
    write = load.run(
        target.url,
        method="POST",
        path="/graphql" if service else "/events",
        body=SERVICE_WRITE if service else BASELINE_WRITE,
        headers=headers,
        orders=200,
        connections=connections,
        seconds=seconds,
    )
    read = load.run(
        target.url,
        method="GET",
        path=SERVICE_READ_PATH if service else BASELINE_READ_PATH,
        body=None,
        headers=headers,
        orders=200,
        connections=connections,
        seconds=seconds,
    )
    return {"write": write, "read": read}


def run_http(args: argparse.Namespace, workdir: Path, token: str) -> list[dict[str, Any]]:
    """Write and read throughput of the service next to the baseline, on each database."""
    seconds = 3 if args.quick else 10
    results = []
    for kind in args.databases:
        with database(kind, workdir) as url, baseline_server(url, workdir) as running:
            baseline = _write_and_read(
                running, service=False, token=token, seconds=seconds, connections=args.connections
            )
        with database(kind, workdir) as url, server(url, workdir) as running:
            service = _write_and_read(
                running, service=True, token=token, seconds=seconds, connections=args.connections
            )
        figures = {
            "database": kind,
            "connections": args.connections,
            "baseline": baseline,
            "service": service,
            "write_ratio": round(service["write"]["rps"] / baseline["write"]["rps"], 2),
            "read_ratio": round(service["read"]["rps"] / baseline["read"]["rps"], 2),
        }
        results.append(figures)
        print(json.dumps(figures), flush=True)
    return results


def run_fanout(args: argparse.Namespace, workdir: Path, token: str) -> list[dict[str, Any]]:
    sizes = [200] if args.quick else [1000, 10000]
    results = []
    for kind in args.databases:
        for size in sizes:
            with database(kind, workdir) as url, server(url, workdir) as running:
                figures = fanout.measure(
                    running.url,
                    running.process.pid,
                    token,
                    size,
                    events=5 if args.quick else 20,
                    clients=2,
                )
                figures["database"] = kind
                results.append(figures)
                print(json.dumps(figures), flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small loads, under a minute")
    parser.add_argument("--only", nargs="*", default=["http", "fanout"], choices=["http", "fanout"])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--databases", nargs="*", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "latest.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="order-events-bench-") as tmp:
        workdir = Path(tmp)
        issuer = LocalIssuer.load_or_create(Settings(data_dir=workdir / "data"))
        token = issuer.mint(
            account_id=fanout.ACCOUNT,
            scope="read:shopping write:shopping",
            subject="bench",
            ttl_seconds=3600,
        )
        report: dict[str, Any] = {
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "quick": args.quick,
        }
        if "http" in args.only:
            report["http"] = run_http(args, workdir, token)
        if "fanout" in args.only:
            report["fanout"] = run_fanout(args, workdir, token)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
