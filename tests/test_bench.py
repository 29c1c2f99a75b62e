"""The benchmark harness runs end to end and reports every figure (tiny loads: no timing is
judged here, only that each figure is measured and next to its baseline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is missing: .ci/run installs it (apt-get install wrk)")
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")


def test_quick_run_reports_every_figure(wrk: None, tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--tiny",
            "--seconds",
            "1",
            "--connections",
            "4",
            "--json",
            str(report_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_file.read_text())

    assert [r["database"] for r in report["http"]] == ["sqlite", "postgres"]
    for figures in report["http"]:
        for side in ("service", "baseline"):
            for phase in ("write", "read"):
                assert figures[side][phase]["requests"] > 0
                assert figures[side][phase]["failed"] == 0
                assert {"rps", "p50_ms", "p99_ms"} <= set(figures[side][phase])
        assert figures["write_ratio"] > 0 and figures["read_ratio"] > 0
    for growth in report["growth"]:
        assert {
            "write_p50_ms_ratio",
            "write_p99_ms_ratio",
            "read_p50_ms_ratio",
            "read_p99_ms_ratio",
        } <= set(growth)
    for fanout in report["fanout"]:
        assert fanout["missing"] == 0
        assert fanout["p50_ms"] is not None and fanout["p99_ms"] is not None
        assert "kib_per_subscription" in fanout
    assert report["workers"]["cross_worker_delivery"]["all_received_in_order"] is True
    assert report["workers"]["ratio_2_to_1"] > 0
    assert "requests/s" in run.stdout  # the table
