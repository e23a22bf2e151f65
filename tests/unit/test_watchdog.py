"""The supervisor's watchdog (issue #19): every dead part is restarted, and one that
keeps failing to restart never holds up another."""

from __future__ import annotations

import threading
import time

from app.cli import _Watchdog, _Watched


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


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_part_that_cannot_restart_does_not_keep_another_down() -> None:
    dimse = Part("the DIMSE process", broken=True)
    database = Part("the embedded PostgreSQL")
    # the broken part first in the list: the old watchdog retried it for ever
    dog = _Watchdog([dimse.watched(), database.watched()], interval=0.02)
    dog.start()
    try:
        dimse.running = False
        assert _until(lambda: dimse.attempts >= 1)
        database.running = False
        assert _until(lambda: database.running), "the database was never restarted"
        # and one that dies while the other keeps failing is restarted again
        database.running = False
        assert _until(lambda: database.running)
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
        assert _until(lambda: dimse.attempts >= 1)
        time.sleep(1.5)
        assert 2 <= dimse.attempts <= 3
        dimse.broken = False
        assert _until(lambda: dimse.running, timeout=3)
    finally:
        dog.stop()


def test_a_restart_that_returns_false_is_retried_and_a_part_alive_again_is_forgotten() -> None:
    results = iter([False, True])
    state = {"running": False, "calls": 0}

    def restart() -> bool:
        state["calls"] += 1
        ok = next(results)
        state["running"] = ok
        return ok

    dog = _Watchdog([_Watched("the background process", lambda: state["running"], restart)], 0.02)
    dog.start()
    try:
        assert _until(lambda: state["running"], timeout=5)
        assert state["calls"] == 2
    finally:
        dog.stop()


def test_stop_returns_promptly_while_a_part_keeps_failing() -> None:
    dimse = Part("the DIMSE process", broken=True)
    dimse.running = False
    dog = _Watchdog([dimse.watched()], interval=0.02)
    dog.start()
    assert _until(lambda: dimse.attempts >= 1)
    started = time.monotonic()
    dog.stop()
    assert time.monotonic() - started < 2
    assert not dog._thread.is_alive()
