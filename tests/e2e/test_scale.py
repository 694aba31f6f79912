"""bench/scale.py at a small size: the store fills through the vectors topic, builds its
index in the background while searches keep answering, and finds what exact search finds.

The rates and latencies are the benchmark's business (bench/RESULTS.md); this keeps the
command working and holds what must hold at any size: recall, and no search failing or
timing out while an index build runs and writes keep arriving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "scale.py"

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def test_a_small_scale_run_keeps_recall_and_answers_during_builds(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--points", "30000", "--steps", "15000,30000",
         "--queries", "100", "--build-min-points", "5000", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows, result = report["rows"], report["result"]

    assert [r["points"] for r in rows] == [15000, 30000]
    for row in rows:
        assert row["recall_unfiltered"] >= 0.95, row
        assert row["recall_filter_1pct"] >= 0.95, row
        assert row["ingest_per_s"] > 0
        assert row["built_after_s"] > 0
    # Each step's points were built (5,000 start a build), and searches ran meanwhile.
    assert result["builds"].get("built", 0) >= 2, result["builds"]
    during = result["during_builds"]
    assert during["searches"] >= 20, during
    assert during["failed"] == 0, during
    assert result["all_probes_failed"] == 0, result
    assert result["restart_to_serving_s"] > 0
    assert result["reopen_s"] > 0
    assert "| 30,000 |" in done.stdout  # the table
