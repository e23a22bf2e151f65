"""Backup, restore and fixity on a real archive, next to the bare file operations they
are made of (issue #19).

Usage: python benchmarks/operations.py [--instances 2000]

One fresh ``pictor serve`` (its embedded PostgreSQL), filled over STOW-RS with
``--instances`` synthetic 512x512 16-bit CT slices (about 0.5 MB each). Then, in one
run, on the same file system:
1. reference copy: the storage directory copied file by file with fsync (what any
   backup must at least do), MB/s;
2. ``pictor backup DEST`` (first: every file), while serving: seconds, MB/s, and the
   ratio to the reference copy;
3. the same again with nothing new (incremental), then after 100 new instances;
4. reference hash: every stored file read and hashed with SHA-256 in one process;
5. ``pictor verify``: seconds, MB/s, ratio to the reference hash;
6. ``pictor restore`` onto an empty data directory: seconds, MB/s; the restored archive
   answers QIDO with every instance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import _client  # noqa: F401 - puts the repository and tests/ on sys.path
from server import PictorProcess
from synth import ct_slice, new_uids

BOUNDARY = "bench-ops"
ROOT = Path(__file__).resolve().parents[1]


def _stow(http: httpx.Client, url: str, study: str, series: str, first: int, n: int) -> None:
    parts = [ct_slice(study, series, first + i) for i in range(n)]
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
            for p in parts
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )
    r = http.post(
        f"{url}/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        },
    )
    assert r.status_code == 200, r.text[:300]


def _cli(*args: str, data_dir: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env["PICTOR_DATA_DIR"] = str(data_dir)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, cwd=ROOT
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stdout + out.stderr
    return elapsed, out.stdout.strip()


def _reference_copy(src: Path, dest: Path) -> float:
    start = time.perf_counter()
    for path in src.rglob("*.dcm"):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f, open(target, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
            g.flush()
            os.fsync(g.fileno())
    return time.perf_counter() - start


def _reference_hash(src: Path) -> float:
    start = time.perf_counter()
    for path in src.rglob("*.dcm"):
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pictor-ops-"))
    data = work / "data"
    server = PictorProcess(data, workers=2, env={"PICTOR_SCRUB_RATE": "0"}).start()
    results: dict[str, object] = {"instances": args.instances}
    try:
        http = httpx.Client(timeout=120)
        study, series = new_uids()
        for first in range(0, args.instances, 10):
            _stow(http, server.dicomweb, study, series, first, min(10, args.instances - first))
        storage = data / "storage"
        size = sum(p.stat().st_size for p in storage.rglob("*.dcm"))
        mb = size / 1e6
        results["megabytes"] = round(mb, 1)
        copy_s = _reference_copy(storage, work / "ref-copy")
        shutil.rmtree(work / "ref-copy")
        backup_s, out = _cli("backup", str(work / "backup"), data_dir=data)
        again_s, again = _cli("backup", str(work / "backup"), data_dir=data)
        study2, series2 = new_uids()
        for first in range(0, 100, 10):
            _stow(http, server.dicomweb, study2, series2, first, 10)
        more_s, more = _cli("backup", str(work / "backup"), data_dir=data)
        mb_all = sum(p.stat().st_size for p in storage.rglob("*.dcm")) / 1e6
        hash_s = _reference_hash(storage)
        verify_s, verified = _cli("verify", data_dir=data)
        http.close()
    finally:
        server.stop()
    restore_s, restored = _cli("restore", str(work / "backup"), data_dir=work / "restored")
    check = PictorProcess(work / "restored", workers=1).start()
    try:
        found = httpx.get(f"{check.dicomweb}/studies/{study}/instances", params={"limit": 100000})
        assert found.status_code == 200 and len(found.json()) == args.instances
    finally:
        check.stop()
    results.update(
        reference_copy_mb_s=round(mb / copy_s, 1),
        backup_first_s=round(backup_s, 2),
        backup_first_mb_s=round(mb / backup_s, 1),
        backup_vs_copy=round(copy_s / backup_s, 2),
        backup_nothing_new_s=round(again_s, 2),
        backup_100_new_s=round(more_s, 2),
        reference_hash_mb_s=round(mb_all / hash_s, 1),
        verify_s=round(verify_s, 2),
        verify_mb_s=round(mb_all / verify_s, 1),
        verify_vs_hash=round(hash_s / verify_s, 2),
        restore_s=round(restore_s, 2),
        restore_mb_s=round(mb_all / restore_s, 1),
    )
    for line in (out, again, more, verified, restored):
        print(line)
    print(json.dumps(results, indent=2))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "operations.json").write_text(json.dumps(results))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
