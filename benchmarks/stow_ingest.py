"""STOW-RS ingest throughput, next to the machine's sequential disk write speed.

Usage: python benchmarks/stow_ingest.py [--instances 1000] [--clients 4] [--batch 10]

Measured in one run, on the filesystem that holds the data directory:
1. sequential disk write: 1 GiB in 4 MiB writes, then fsync (like ``dd conv=fsync``);
2. CT ingest: synthetic 512x512 16-bit CT slices, ``--batch`` per STOW request,
   ``--clients`` concurrent clients: instances/s and MB/s;
3. large instances: ``--large-count`` multi-frame instances of ``--large-mb`` MB, one per
   request, same clients: MB/s as a fraction of the disk write speed.
Every response must be 200 with every instance referenced, else the run fails: a fast
wrong answer does not count. The server is fresh (new data directory, new embedded
PostgreSQL) and durable as always (fsync before the response).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import uvloop

from _client import MULTIPART, Connection, multipart_body
from server import PictorProcess
from synth import big_multiframe, ct_slice, new_uids


def disk_write_speed(
    directory: Path, *, direct: bool, total: int = 1 << 30, chunk: int = 4 << 20
) -> float:
    """Sequential write of ``total`` bytes + fsync, MB/s (1 MB = 10^6 bytes).

    ``direct``: with O_DIRECT from an aligned buffer (the device's speed, no page cache);
    else ordinary buffered writes (like ``dd conv=fsync``).
    """
    path = directory / "disk-speed.bin"
    buf = mmap.mmap(-1, chunk)
    buf.write(os.urandom(chunk))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    start = time.perf_counter()
    fd = os.open(path, flags)
    try:
        for _ in range(total // chunk):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return total / elapsed / 1e6


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def run_requests(
    port: int, bodies: list[bytes], clients: int, content_type: str
) -> tuple[float, int]:
    """Send all bodies with ``clients`` keep-alive connections; returns (seconds, stored)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    stored = 0

    async def client() -> None:
        nonlocal stored
        conn = Connection("127.0.0.1", port)
        try:
            while not queue.empty():
                body = queue.get_nowait()
                status, answer = await conn.post("/dicom-web/studies", body, content_type)
                if status != 200:
                    raise RuntimeError(f"STOW answered {status}: {answer[:500]!r}")
                stored += len(json.loads(answer)["00081199"]["Value"])
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, stored


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=1000, help="CT slices per round")
    parser.add_argument("--rounds", type=int, default=3, help="CT rounds (new series each)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--large-count", type=int, default=8)
    parser.add_argument("--large-mb", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, default=0, help="server processes (0: the server default)"
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "stow_ingest.json"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(
        prefix="pictor-bench-", dir=os.environ.get("PICTOR_BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        speeds = {
            "buffered": max(disk_write_speed(root, direct=False) for _ in range(2)),
            "direct": max(disk_write_speed(root, direct=True) for _ in range(2)),
        }
        disk = max(speeds.values())  # the reference: the fastest the disk was seen to write
        print(
            f"sequential disk write, 1 GiB + fsync: buffered {speeds['buffered']:.0f} MB/s, "
            f"O_DIRECT {speeds['direct']:.0f} MB/s (best of 2 each)"
        )

        rounds = []
        for _ in range(args.rounds):
            study, series = new_uids()
            slices = [ct_slice(study, series, i) for i in range(args.instances)]
            ct_bytes = sum(map(len, slices))
            rounds.append(
                [
                    multipart_body(slices[i : i + args.batch])
                    for i in range(0, len(slices), args.batch)
                ]
            )
            del slices

        large_dir = root / "large"
        large_dir.mkdir()
        large = []
        for i in range(args.large_count):
            path = big_multiframe(large_dir / f"mf{i}.dcm", args.large_mb * 1_000_000)
            large.append(path.read_bytes())
            path.unlink()
        large_bytes = sum(map(len, large))

        server = PictorProcess(root / "data", workers=args.workers).start()
        try:
            pids = server.pids()
            ct_times, ct_cpu = [], []
            for bodies in rounds:
                cpu0 = cpu_seconds(pids)
                ct_time, ct_stored = uvloop.run(
                    run_requests(server.port, bodies, args.clients, MULTIPART)
                )
                ct_cpu.append(cpu_seconds(pids) - cpu0)
                ct_times.append(ct_time)
                if ct_stored != args.instances:
                    raise RuntimeError(f"stored {ct_stored} of {args.instances} CT instances")
                print(f"  CT round: {args.instances / ct_time:7.1f} instances/s", flush=True)
            cpu0 = cpu_seconds(pids)
            lg_time, lg_stored = uvloop.run(
                run_requests(server.port, large, args.clients, "application/dicom")
            )
            cpu_lg = cpu_seconds(pids) - cpu0
            if lg_stored != args.large_count:
                raise RuntimeError(f"stored {lg_stored} of {args.large_count} large instances")
        finally:
            server.stop()

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "disk_write_mb_s": {k: round(v, 1) for k, v in speeds.items()},
        "ct": {
            "instances_per_round": args.instances,
            "clients": args.clients,
            "batch": args.batch,
            "rounds_instances_per_s": [round(args.instances / t, 1) for t in ct_times],
            "instances_per_s": round(args.instances / statistics.median(ct_times), 1),
            "mb_per_s": round(ct_bytes / statistics.median(ct_times) / 1e6, 1),
            "server_cpu_ms_per_instance": round(
                statistics.median(ct_cpu) / args.instances * 1000, 3
            ),
        },
        "large": {
            "instances": args.large_count,
            "mb_each": round(large_bytes / args.large_count / 1e6, 1),
            "seconds": round(lg_time, 3),
            "mb_per_s": round(large_bytes / lg_time / 1e6, 1),
            "fraction_of_disk": round(large_bytes / lg_time / 1e6 / disk, 3),
            "server_cpu_s": round(cpu_lg, 2),
        },
    }
    ct, lg = results["ct"], results["large"]
    print(
        f"CT 512x512 ingest ({args.instances} slices x {args.rounds} rounds, {args.clients} "
        f"clients, {args.batch}/request): median {ct['instances_per_s']:7.1f} instances/s  "
        f"{ct['mb_per_s']:6.1f} MB/s  (rounds: {ct['rounds_instances_per_s']})  "
        f"server CPU {ct['server_cpu_ms_per_instance']:.2f} ms/instance"
    )
    print(
        f"large instances ({args.large_count} x {lg['mb_each']:.0f} MB): {lg['mb_per_s']:7.1f} MB/s "
        f"= {lg['fraction_of_disk'] * 100:.0f}% of disk write speed"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
