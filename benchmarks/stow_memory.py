"""Server memory during one very large STOW-RS upload (streaming, DESIGN.md decision 3).

Usage: python benchmarks/stow_memory.py [--gb 2] [--multipart] [--s3]

Writes a native multi-frame instance of ``--gb`` GB to disk, streams it to a fresh
server in 1 MiB chunks (as ``application/dicom``, or as one part of a
``multipart/related`` body with ``--multipart``), samples the resident memory of all
server processes every 20 ms, and checks the stored file is byte-identical. Prints the
RSS before, the peak during, and the difference. ``--s3``: the archive stores to a
bucket of moto's S3 server on loopback (issue #16), and the object is checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop

from _client import BOUNDARY, MULTIPART, Connection
from s3server import MotoServer
from server import PictorProcess
from synth import big_multiframe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--multipart", action="store_true")
    parser.add_argument("--s3", action="store_true", help="store to an S3 bucket (moto)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.json is None:
        name = "stow_memory_s3.json" if args.s3 else "stow_memory.json"
        args.json = Path(__file__).parent / "results" / name

    with tempfile.TemporaryDirectory(
        prefix="pictor-mem-", dir=os.environ.get("PICTOR_BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        source = big_multiframe(root / "big.dcm", int(args.gb * 1e9))
        size = source.stat().st_size
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        head = tail = b""
        ctype = "application/dicom"
        if args.multipart:
            head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            tail = f"\r\n--{BOUNDARY}--\r\n".encode()
            ctype = MULTIPART

        async def body() -> AsyncIterator[bytes]:
            yield head
            with open(source, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield tail

        moto = MotoServer().start() if args.s3 else None
        env = {}
        if moto is not None:
            bucket = moto.new_bucket()
            env = {**moto.env, "PICTOR_STORAGE_URL": f"s3://{bucket}/mem"}
        server = PictorProcess(root / "data", workers=1, env=env).start()
        try:
            time.sleep(1)
            baseline = server.rss()
            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, server.rss())
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()

            async def upload() -> tuple[int, bytes]:
                conn = Connection("127.0.0.1", server.port)
                try:
                    return await conn.post_stream(
                        "/dicom-web/studies", body(), len(head) + size + len(tail), ctype
                    )
                finally:
                    await conn.close()

            start = time.perf_counter()
            status, answer = uvloop.run(upload())
            elapsed = time.perf_counter() - start
            done.set()
            sampler.join()
            if status != 200:
                raise RuntimeError(f"STOW answered {status}: {answer[:300]!r}")
            check = hashlib.sha256()
            if moto is not None:
                s3 = moto.client()
                (key,) = [k for k in moto.keys(bucket, "mem/") if "/.pictor/" not in k]
                for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 22):
                    check.update(chunk)
                count = 1
            else:
                stored = list((root / "data" / "storage").rglob("*.dcm"))
                count = len(stored)
                with open(stored[0], "rb") as f:
                    while chunk := f.read(1 << 22):
                        check.update(chunk)
            if count != 1 or check.hexdigest() != digest.hexdigest():
                raise RuntimeError("the stored file differs from the upload")
        finally:
            server.stop()
            if moto is not None:
                moto.stop()

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "upload_bytes": size,
        "multipart": args.multipart,
        "storage": "s3" if args.s3 else "file",
        "seconds": round(elapsed, 2),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "rss_before_mb": round(baseline / 1e6, 1),
        "rss_peak_mb": round(peak / 1e6, 1),
        "rss_growth_mb": round((peak - baseline) / 1e6, 1),
    }
    print(
        f"{size / 1e9:.2f} GB upload ({'multipart' if args.multipart else 'application/dicom'}, "
        f"{'S3' if args.s3 else 'file'} storage) "
        f"in {elapsed:.1f} s ({results['mb_per_s']} MB/s): server RSS {results['rss_before_mb']} MB "
        f"before, {results['rss_peak_mb']} MB peak, growth {results['rss_growth_mb']} MB"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
