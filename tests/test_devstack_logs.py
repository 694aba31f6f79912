"""The stack's process logs: appended across runs, judged by this run's lines only."""

from __future__ import annotations

import sys
from pathlib import Path

from imgsim_devstack.processes import _Process


def run_once(process: _Process, text: str) -> None:
    process._spawn([sys.executable, "-c", f"print({text!r})"])
    assert process.proc is not None
    process.proc.wait(timeout=30)


def test_a_previous_runs_ready_line_does_not_count(tmp_path: Path) -> None:
    process = _Process("demo", tmp_path / "demo.log")
    run_once(process, "demo is READY")
    assert "READY" in process.log_of_this_run()
    run_once(process, "demo crashed at start")
    assert "READY" not in process.log_of_this_run()
    assert "READY" not in process.log_tail()
    assert process.log_tail() == "demo crashed at start"
    whole = (tmp_path / "demo.log").read_text()
    assert "READY" in whole  # the earlier run's log is kept
    assert whole.index("READY") < whole.index("crashed")
    assert process._log is not None
    process._log.close()
