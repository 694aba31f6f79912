"""A dependency's outage is logged a bounded number of times, and its end once."""

from __future__ import annotations

import logging

import pytest

from imgsim_core.kafka import Outage
from imgsim_core.telemetry import RepeatFilter


def record(name: str, msg: str, created: float, level: int = logging.ERROR) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, msg, (), None)
    made.created = created
    return made


def test_repeats_pass_once_a_window_with_the_count_left_out() -> None:
    repeats = RepeatFilter(("aiokafka",), window_s=30)
    passed = [
        repeats.filter(r)
        for r in [record("aiokafka.conn", "Unable connect to %s", t / 10) for t in range(3000)]
    ]  # 300 s of a reconnect every 100 ms
    assert sum(passed) == 10
    late = record("aiokafka.conn", "Unable connect to %s", 300.0)
    assert repeats.filter(late)
    assert "(299 more like it in 30 s)" in str(late.msg)


def test_other_loggers_levels_and_messages_are_untouched() -> None:
    repeats = RepeatFilter(("aiokafka",), window_s=30)
    assert all(repeats.filter(record("imgsim_gateway", "x", 0.0)) for _ in range(5))
    assert all(repeats.filter(record("aiokafka", "x", 0.0, logging.INFO)) for _ in range(5))
    assert repeats.filter(record("aiokafka", "first kind", 0.0))
    assert repeats.filter(record("aiokafka", "second kind", 0.0))
    assert not repeats.filter(record("aiokafka", "first kind", 1.0))


def test_an_outage_is_said_once_and_its_end_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("producing to Kafka", logging.getLogger("test.outage"))
    with caplog.at_level(logging.INFO, "test.outage"):
        outage.ok()
        for _ in range(50):
            outage.failed(ConnectionError("refused"))
        assert outage.down
        outage.ok()
        outage.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("producing to Kafka is failing: refused")
    assert "works again" in messages[1]
    assert "50 failed calls" in messages[1]
    assert not outage.down
