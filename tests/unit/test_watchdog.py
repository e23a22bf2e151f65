"""The supervisor's watchdog (issue #19): every dead part is restarted, and one that
keeps failing to restart never holds up another."""

from __future__ import annotations

import threading
import time
from typing import Any

from app.cli import _Watchdog, _Watched

from conftest import until


class Part:
    """A part of the server as the watchdog sees it: it can be killed, and its
    restart either works or raises (``broken``)."""

    def __init__(self, name: str, broken: bool = False) -> None:
        self.name = name
        self.running = True
        self.broken = broken
        self.attempts = 0
        self.lock = threading.Lock()

    def restart(self) -> bool:
        with self.lock:
            self.attempts += 1
            if self.broken:
                raise OSError("address already in use")
            self.running = True
            return True

    def watched(self) -> _Watched:
        return _Watched(self.name, lambda: self.running, self.restart)


def _soon(check: Any, what: str, timeout: float = 10.0) -> None:
    until(check, timeout=timeout, what=what, poll=0.01)


def test_a_part_that_cannot_restart_does_not_keep_another_down() -> None:
    dimse = Part("the DIMSE process", broken=True)
    database = Part("the embedded PostgreSQL")
    # the broken part first in the list: the old watchdog retried it for ever
    dog = _Watchdog([dimse.watched(), database.watched()], interval=0.02)
    dog.start()
    try:
        dimse.running = False
        _soon(lambda: dimse.attempts >= 1, "a first restart of the broken part")
        database.running = False
        _soon(lambda: database.running, "the database's restart")
        # and one that dies while the other keeps failing is restarted again
        database.running = False
        _soon(lambda: database.running, "the database's second restart")
        assert database.attempts == 2
    finally:
        dog.stop()
    assert not dog._thread.is_alive()


def test_a_failing_restart_is_retried_no_faster_than_once_a_second() -> None:
    dimse = Part("the DIMSE process", broken=True)
    dog = _Watchdog([dimse.watched()], interval=0.02)
    dimse.running = False
    dog.start()
    try:
        _soon(lambda: dimse.attempts >= 1, "a first restart")
        time.sleep(1.5)
        assert 2 <= dimse.attempts <= 3
        dimse.broken = False
        _soon(lambda: dimse.running, "the restart once it works", timeout=3)
    finally:
        dog.stop()


def test_a_restart_that_returns_false_is_retried() -> None:
    results = iter([False, True])
    state: dict[str, Any] = {"running": False, "calls": 0}

    def restart() -> bool:
        state["calls"] += 1
        ok = next(results)
        state["running"] = ok
        return ok

    dog = _Watchdog(
        [_Watched("the background process", lambda: bool(state["running"]), restart)], 0.02
    )
    dog.start()
    try:
        _soon(lambda: state["running"], "the second restart", timeout=5)
        assert state["calls"] == 2
    finally:
        dog.stop()


def test_a_part_seen_alive_again_loses_its_retry_delay() -> None:
    """A part whose restart failed, that then runs again (started by hand, or its
    port freed), and dies once more, is restarted at the next round, not after the
    failed attempt's retry delay."""
    dimse = Part("the DIMSE process", broken=True)
    dimse.running = False
    dog = _Watchdog([dimse.watched()], interval=0.02)
    dog.start()
    try:
        _soon(lambda: dimse.attempts == 1, "the failed restart")
        dimse.broken = False
        dimse.running = True  # it runs again before its retry is due
        time.sleep(0.1)  # a few rounds see it alive
        dimse.running = False
        died = time.monotonic()
        _soon(lambda: dimse.running, "the restart", timeout=3)
        assert time.monotonic() - died < 0.5, "it waited for the old retry delay"
        assert dimse.attempts == 2
    finally:
        dog.stop()


def test_stop_returns_promptly_while_a_part_keeps_failing() -> None:
    dimse = Part("the DIMSE process", broken=True)
    dimse.running = False
    dog = _Watchdog([dimse.watched()], interval=0.02)
    dog.start()
    _soon(lambda: dimse.attempts >= 1, "a first restart")
    started = time.monotonic()
    dog.stop()
    assert time.monotonic() - started < 2
    assert not dog._thread.is_alive()
