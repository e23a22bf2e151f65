"""How long the archive is unavailable when its embedded PostgreSQL is killed (issue
#19): ``kill -9`` of the postmaster of a running ``pictor serve`` (2 workers), then the
time until ``/health`` answers 200 again; ``--kills`` times, 2 s apart.

Usage: python benchmarks/recovery.py [--kills 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import _client  # noqa: F401 - puts the repository and tests/ on sys.path
from server import PictorProcess, postmaster_pid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pictor-recovery-"))
    server = PictorProcess(root / "data", workers=2).start()

    def health() -> int:
        try:
            with urllib.request.urlopen(server.base + "/health", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    seconds = []
    try:
        for _ in range(args.kills):
            time.sleep(2)
            pg = postmaster_pid(server.data_dir)
            assert pg is not None
            start = time.monotonic()
            os.kill(pg, signal.SIGKILL)
            while health() == 200 and time.monotonic() - start < 2:
                time.sleep(0.02)  # until the loss is noticed
            while health() != 200:
                time.sleep(0.05)
            seconds.append(round(time.monotonic() - start, 2))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"seconds from kill -9 of the postmaster to /health 200 again: {seconds}")


if __name__ == "__main__":
    main()
