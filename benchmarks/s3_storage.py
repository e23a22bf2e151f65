"""Object storage (issue #16): an archive on S3 against the same archive on the file
system, same run, same corpus, alternating rounds.

    python benchmarks/s3_storage.py [--instances 400] [--rounds 3] [--seconds 6]

The S3 server is moto in server mode on loopback (the one the tests use). It is a
Python program on the same two cores, so it bounds every S3 figure; the script measures
that bound first, with a bare client loop (no Pictor), and reports each Pictor figure
against both the file system and that bound:

* clients: obstore and boto3 against the same server, PUTs of a 512 KB object and
  ranged GETs of 64 KB, requests/s and the client's CPU per request (why obstore);
* STOW-RS of 512x512 16-bit CT slices, 4 clients, 10 per request: instances/s on S3 and
  on files (target: S3 at least 0.7 of files), and a bare loop of conditional PUTs of
  the same objects with 4 clients (the server's ceiling);
* raw frames (``transfer-syntax=*``), 4 clients: frames/s on each (target: S3 at least
  0.5 of files), and a bare loop of ranged GETs of the same bytes (the ceiling).

Every answer is checked. The memory of a 2 GB upload to S3 is
``python benchmarks/stow_memory.py --s3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pydicom
import uvloop
from pydicom.filebase import DicomBytesIO
from wado import load

from _client import MULTIPART, multipart_body
from s3server import MotoServer
from server import PictorProcess
from stow_ingest import cpu_seconds, run_requests
from synth import ct_slice, new_uids

STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def compare_clients(moto: MotoServer, bucket: str, n: int) -> dict[str, Any]:
    """obstore (async, in this process) and boto3 (synchronous): the same requests."""
    import obstore
    from obstore.store import S3Store

    body = os.urandom(512 << 10)
    s3 = moto.client()
    store = S3Store(bucket, endpoint=moto.endpoint, client_options={"allow_http": True})
    me = psutil.Process()
    out: dict[str, Any] = {}

    def cpu() -> float:
        t = me.cpu_times()
        return t.user + t.system

    def timed(name: str, run: Any) -> None:
        c0, t0 = cpu(), time.perf_counter()
        run()
        wall, used = time.perf_counter() - t0, cpu() - c0
        out[name] = {"req_per_s": round(n / wall, 1), "client_cpu_ms": round(used / n * 1e3, 2)}

    timed(
        "boto3_put",
        lambda: [s3.put_object(Bucket=bucket, Key=f"b/{i}", Body=body) for i in range(n)],
    )
    timed(
        "boto3_get_range",
        lambda: [
            s3.get_object(Bucket=bucket, Key=f"b/{i % n}", Range="bytes=1000-66535")["Body"].read()
            for i in range(n)
        ],
    )

    async def obstore_puts() -> None:
        for i in range(n):
            await obstore.put_async(store, f"o/{i}", body, use_multipart=False)

    async def obstore_gets() -> None:
        for i in range(n):
            await obstore.get_range_async(store, f"o/{i % n}", start=1000, end=66536)

    timed("obstore_put", lambda: asyncio.run(obstore_puts()))
    timed("obstore_get_range", lambda: asyncio.run(obstore_gets()))
    return out


async def bare_loop(
    moto: MotoServer, bucket: str, objects: list[bytes], clients: int, reads: int
) -> dict[str, float]:
    """The S3 server's ceiling for what Pictor asks of it: conditional PUTs of the
    slices, then ranged GETs of their pixel bytes, ``clients`` at once, no Pictor."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=moto.endpoint, client_options={"allow_http": True})
    limit = asyncio.Semaphore(clients)

    async def put(i: int) -> None:
        async with limit:
            await obstore.put_async(store, f"bare/{i}", objects[i], mode="create")

    t0 = time.perf_counter()
    await asyncio.gather(*(put(i) for i in range(len(objects))))
    puts = len(objects) / (time.perf_counter() - t0)

    async def get(i: int) -> None:
        async with limit:
            data = objects[i % len(objects)]
            got = await obstore.get_range_async(
                store,
                f"bare/{i % len(objects)}",
                start=len(data) - (512 * 512 * 2),
                length=512 * 512 * 2,
            )
            assert len(got) == 512 * 512 * 2

    t0 = time.perf_counter()
    await asyncio.gather(*(get(i) for i in range(reads)))
    gets = reads / (time.perf_counter() - t0)
    return {"put_per_s": round(puts, 1), "get_range_per_s": round(gets, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=400, help="CT slices per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=6.0, help="per frames round")
    parser.add_argument("--client-requests", type=int, default=300)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "s3_storage.json"
    )
    args = parser.parse_args()

    moto = MotoServer().start()
    moto_proc = psutil.Process(moto.proc.pid) if moto.proc else None
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    try:
        for name, value in moto.env.items():
            os.environ[name] = value
        results["clients"] = compare_clients(moto, moto.new_bucket(), args.client_requests)
        for name, figures in results["clients"].items():
            print(
                f"{name:18s} {figures['req_per_s']:7.1f} req/s, client CPU {figures['client_cpu_ms']} ms/req"
            )

        with tempfile.TemporaryDirectory(
            prefix="pictor-s3-", dir=os.environ.get("PICTOR_BENCH_DIR")
        ) as tmp:
            root = Path(tmp)
            bucket = moto.new_bucket()
            servers = {
                "file": PictorProcess(root / "file").start(),
                "s3": PictorProcess(
                    root / "s3", env={**moto.env, "PICTOR_STORAGE_URL": f"s3://{bucket}/bench"}
                ).start(),
            }
            try:
                stow: dict[str, list[float]] = {"file": [], "s3": []}
                cpu: dict[str, list[float]] = {"file": [], "s3": [], "moto": []}
                frame_paths: dict[str, list[str]] = {"file": [], "s3": []}
                sample: list[bytes] = []
                for r in range(args.rounds):
                    for kind in ("file", "s3") if r % 2 == 0 else ("s3", "file"):
                        study, series = new_uids()
                        slices = [ct_slice(study, series, i) for i in range(args.instances)]
                        sample = slices
                        bodies = [
                            multipart_body(slices[i : i + args.batch])
                            for i in range(0, len(slices), args.batch)
                        ]
                        server = servers[kind]
                        pids = server.pids()
                        c0 = cpu_seconds(pids)
                        m0 = sum(moto_proc.cpu_times()[:2]) if moto_proc else 0.0
                        seconds, stored = uvloop.run(
                            run_requests(server.port, bodies, args.clients, MULTIPART)
                        )
                        if stored != args.instances:
                            raise RuntimeError(f"{kind}: stored {stored} of {args.instances}")
                        cpu[kind].append((cpu_seconds(pids) - c0) / args.instances * 1e3)
                        if kind == "s3" and moto_proc:
                            cpu["moto"].append(
                                (sum(moto_proc.cpu_times()[:2]) - m0) / args.instances * 1e3
                            )
                        stow[kind].append(args.instances / seconds)
                        print(
                            f"  STOW {kind:4s}: {args.instances / seconds:7.1f} instances/s",
                            flush=True,
                        )
                        for blob in slices[:100]:
                            ds = pydicom.dcmread(DicomBytesIO(blob), stop_before_pixels=True)
                            frame_paths[kind].append(
                                f"/dicom-web/studies/{study}/series/{series}"
                                f"/instances/{ds.SOPInstanceUID}/frames/1"
                            )
                stow_ratios = [s / f for s, f in zip(stow["s3"], stow["file"], strict=True)]

                def check(status: int, headers: dict[str, str], body: bytes) -> int:
                    if status != 200 or len(body) < 512 * 512 * 2:
                        raise RuntimeError(f"frame answered {status}, {len(body)} bytes")
                    return 512 * 512 * 2

                frames: dict[str, list[float]] = {"file": [], "s3": []}
                for r in range(args.rounds):
                    for kind in ("file", "s3") if r % 2 == 0 else ("s3", "file"):
                        count, _, elapsed, _ = uvloop.run(
                            load(
                                servers[kind].port,
                                frame_paths[kind],
                                STAR,
                                args.clients,
                                args.seconds,
                                check,
                            )
                        )
                        frames[kind].append(count / elapsed)
                        print(f"  frames {kind:4s}: {count / elapsed:7.1f} frames/s", flush=True)
                frame_ratios = [s / f for s, f in zip(frames["s3"], frames["file"], strict=True)]
            finally:
                for server in servers.values():
                    server.stop()
            bare = uvloop.run(
                bare_loop(moto, moto.new_bucket(), sample, args.clients, 4 * len(sample))
            )
    finally:
        moto.stop()

    results["stow"] = {
        "file_instances_per_s": round(statistics.median(stow["file"]), 1),
        "s3_instances_per_s": round(statistics.median(stow["s3"]), 1),
        "ratio_s3_to_file": round(statistics.median(stow_ratios), 3),
        "bare_put_per_s": bare["put_per_s"],
        "ratio_s3_to_bare_put": round(statistics.median(stow["s3"]) / bare["put_per_s"], 3),
        "server_cpu_ms_per_instance": {
            k: round(statistics.median(v), 2) for k, v in cpu.items() if v
        },
    }
    results["frames"] = {
        "file_frames_per_s": round(statistics.median(frames["file"]), 1),
        "s3_frames_per_s": round(statistics.median(frames["s3"]), 1),
        "ratio_s3_to_file": round(statistics.median(frame_ratios), 3),
        "bare_get_range_per_s": bare["get_range_per_s"],
        "ratio_s3_to_bare_get": round(statistics.median(frames["s3"]) / bare["get_range_per_s"], 3),
    }
    print(json.dumps({k: results[k] for k in ("stow", "frames")}, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
