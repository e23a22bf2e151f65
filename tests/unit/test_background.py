"""The background process's priority (app.background): which databases are on this
machine, and which processes it lowers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.background import lower_priority, on_this_machine, session_lowering
from app.config import load_settings


@pytest.mark.parametrize(
    ("dsn", "local"),
    [
        ("postgresql://pictor@127.0.0.1:5432/pictor", True),
        ("postgresql://pictor@[::1]:5432/pictor", True),
        ("postgresql://pictor@localhost/pictor", True),
        ("postgresql:///pictor?host=/var/run/postgresql", True),  # the Unix socket
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/pictor", True),
        ("postgresql://pictor@db.hospital.example:5432/pictor", False),
        ("postgresql://pictor@10.1.2.3/pictor", False),
        ("postgresql://pictor@[2001:db8::1]/pictor", False),
        ("postgresql://pictor@[not-an-address/pictor", False),  # malformed: not lowered
    ],
)
def test_which_databases_run_on_this_machine(dsn: str, local: bool) -> None:
    assert on_this_machine(dsn) is local


def test_only_postgres_processes_are_lowered() -> None:
    # a process that is not PostgreSQL keeps its priority, whatever its pid
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert lower_priority(child.pid, 10) is False
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(
            os.PRIO_PROCESS, os.getpid()
        )
    finally:
        child.kill()
        child.wait()
    assert lower_priority(child.pid, 10) is False  # gone


def test_sessions_of_a_remote_database_are_left_alone() -> None:
    remote = load_settings({}, {"DATABASE_URL": "postgresql://pictor@db.example/pictor"})
    local = load_settings({}, {"DATABASE_URL": "postgresql://pictor@127.0.0.1/pictor"})
    assert session_lowering(remote) is None
    assert session_lowering(local) is not None
    off = load_settings(
        {}, {"DATABASE_URL": "postgresql://127.0.0.1/p", "PICTOR_BACKGROUND_NICE": "0"}
    )
    assert session_lowering(off) is None
