"""Fan-out: one event to many subscribers on one server process.

Opens N WebSocket connections (one subscription each, all to one order) from several client
processes, then posts events one at a time and records, in each client, the delay from the
event's ``createdAt`` (stamped just before its commit) to its receipt. Also reports the
server's resident memory per idle subscription (RSS delta / N, after a warm-up of a few
subscriptions opened and closed, so that one-time allocations are not counted).

The clients (``bench.wsclient``) are kept lean, or the figure would measure them; their CPU
time and the server's while the events are delivered are reported per delivery, the
server's split into user and system (kernel) time.

Spacing: event k+1 is posted only once every subscriber has received event k (then 50 ms of
quiet), with a generous 10 s cap per event that is counted when it is hit. The target is about
one event reaching N subscribers; a fixed gap shorter than one event's delivery makes each
event queue behind the previous one, so the figure would grow with the number of events
posted rather than describe one fan-out. Nothing is dropped: every expected delivery that did
not arrive by the report is counted as ``missing``.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.wsclient import ACCOUNT, ORDER, client_process

CREATE = (
    "mutation($a: ID!, $o: ID!) { createOrderEvent(accountId: $a, orderId: $o, "
    'event: {service: "bench", serviceStatus: "tick"}) { version createdAt } }'
)
PACING_QUIET_SECONDS = 0.05


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_time(pid: int) -> float:
    """CPU time the process's threads have used so far, in nanoseconds' resolution
    (``/proc/<pid>/stat`` counts in ticks of 10 ms: more than a short connect storm takes)."""
    return (
        sum(
            int(stat.read_text().split()[0])
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")
        )
        / 1e9
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU time the process has used so far."""
    # Fields after the command name, which is in parentheses and may contain anything.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _warm_up(context: Any, url: str, token: str, count: int = 20) -> None:
    """Opens and closes a few subscriptions first, so that what the server allocates once
    (the compiled document, caches, modules imported on first use) is not counted per
    subscription."""
    parent, child = context.Pipe()
    process = context.Process(target=client_process, args=(url, token, count, child), daemon=True)
    process.start()
    if not parent.poll(60) or parent.recv() != "ready":
        raise RuntimeError("the warm-up subscribers did not connect")
    parent.send("report")
    parent.recv()
    process.join(timeout=30)
    time.sleep(0.5)


def measure(
    url: str, server_pid: int, token: str, subscribers: int, events: int, clients: int
) -> dict[str, Any]:
    """Runs one fan-out measurement against a running server; returns its figures."""
    context = multiprocessing.get_context("spawn")
    _warm_up(context, url, token)
    before = rss_kib(server_pid)
    connect_cpu_start = cpu_time(server_pid)
    pipes, processes = [], []
    share = [
        subscribers // clients + (1 if i < subscribers % clients else 0) for i in range(clients)
    ]
    for count in share:
        parent, child = context.Pipe()
        # Daemons: if this process fails, they end with it instead of waiting for "report".
        process = context.Process(
            target=client_process, args=(url, token, count, child), daemon=True
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    for pipe in pipes:
        if not pipe.poll(300):
            raise RuntimeError("subscribers did not connect within 300 s")
        answer = pipe.recv()
        if answer != "ready":
            raise RuntimeError(f"a client process failed: {answer}")
    time.sleep(1.0)  # let the last subscriptions reach the hub, and memory settle
    after = rss_kib(server_pid)
    # The server's CPU for the whole connect storm: handshakes, tokens, subscribing, and
    # the table reads each new subscription makes.
    connect_cpu = cpu_time(server_pid) - connect_cpu_start

    server_cpu_start = cpu_seconds(server_pid)
    pacing_timeouts = 0
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for event in range(1, events + 1):
            body = http.post(
                "/graphql", json={"query": CREATE, "variables": {"a": ACCOUNT, "o": ORDER}}
            ).json()
            assert "errors" not in body, body
            for pipe, count in zip(pipes, share, strict=True):
                pipe.send(("wait", count * event))
            pacing_timeouts += sum(not pipe.recv() for pipe in pipes)
            time.sleep(PACING_QUIET_SECONDS)
    if pacing_timeouts:
        time.sleep(2.0)  # late deliveries still count
    server_user, server_system = (
        end - start for end, start in zip(cpu_seconds(server_pid), server_cpu_start, strict=True)
    )
    server_cpu = server_user + server_system

    delays: list[float] = []
    errors: list[str] = []
    client_cpu = 0.0
    for pipe in pipes:
        pipe.send("report")
        their_delays, their_errors, their_cpu = pipe.recv()
        delays.extend(their_delays)
        errors.extend(their_errors)
        client_cpu += their_cpu
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    expected = subscribers * events

    def per_delivery(seconds: float) -> float | None:
        return round(seconds / len(delays) * 1e6, 1) if delays else None

    return {
        "subscribers": subscribers,
        "events": events,
        "deliveries": len(delays),
        "missing": expected - len(delays),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(statistics.median(delays) * 1000, 1) if delays else None,
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1) if delays else None,
        "max_ms": round(max(delays) * 1000, 1) if delays else None,
        "rss_delta_kib": after - before,
        "kib_per_subscription": round((after - before) / subscribers, 2),
        "server_cpu_us_per_subscription": round(connect_cpu / subscribers * 1e6, 1),
        "client_processes": clients,
        "cpu_count": os.cpu_count(),
        "event_spacing": f"after delivery to all + {PACING_QUIET_SECONDS * 1000:.0f} ms",
        "pacing_timeouts": pacing_timeouts,
        # CPU while the events were posted and delivered: the clients' (from "ready" to the
        # report, conversion of createdAt excluded) and the server's, per delivery.
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_us_per_delivery": per_delivery(client_cpu),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_delivery": per_delivery(server_cpu),
        # The kernel's part: on loopback, sending a frame also runs the receiving side's TCP
        # and wakes its reader, on the sender's CPU time.
        "server_system_cpu_us_per_delivery": per_delivery(server_system),
    }
