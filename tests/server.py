"""Run a real ``pictor serve`` process on loopback, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PictorProcess:
    """``pictor serve`` in a subprocess with its own data directory (and embedded PostgreSQL)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        workers: int = 2,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.workers = workers
        self.extra_env = env or {}
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        scheme = "https" if self.extra_env.get("PICTOR_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def start(self, timeout: float = 60) -> PictorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "PICTOR_DATA_DIR": str(self.data_dir),
                "PICTOR_PORT": str(self.port),
                "PICTOR_DIMSE_PORT": "0",
                "PICTOR_HL7_PORT": "0",
                "PICTOR_LOG_LEVEL": "warning",
            }
        )
        if self.workers:  # 0: the server's default (two per core)
            env["PICTOR_WORKERS"] = str(self.workers)
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pictor serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                # readiness only (tests check the certificate themselves)
                context = ssl._create_unverified_context()
                with urllib.request.urlopen(f"{self.base}/health", timeout=2, context=context) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"pictor serve did not become ready: {self.log_path.read_text()[-3000:]}"
        )

    def pids(self) -> list[int]:
        """The server's own processes (not PostgreSQL)."""
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def children(self, module: str) -> list[int]:
        """The server's processes running ``python -m <module>`` (``app.dimse``, ...)."""
        found = []
        for pid in self.pids():
            try:
                if f"-m {module}" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
            except psutil.NoSuchProcess:
                pass
        return found

    def rss(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, as a person would; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        return int(code)

    def kill(self) -> None:
        """SIGKILL the server and its worker processes at once (a crash). The parent
        goes first: uvicorn's supervisor replaces a dead worker, and a replacement
        started between two kills would live on, taking uploads, after the "crash"."""
        if self.proc is None:
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.proc = None


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status in KiB (``VmRSS``, ``VmHWM``: the peak RSS,
    which writing 5 to /proc/<pid>/clear_refs starts again from the current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    return pid if psutil.pid_exists(pid) else None


def stop_postgres(data_dir: Path) -> None:
    """Stop an embedded PostgreSQL left running by a killed server."""
    pid = postmaster_pid(data_dir)
    if pid is not None:
        os.kill(pid, signal.SIGINT)  # PostgreSQL: SIGINT is "fast shutdown"
        psutil.Process(pid).wait(30)
