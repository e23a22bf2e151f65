"""The cost of access control and the audit trail (issue #8): QIDO-RS and raw frame
throughput with ``--auth`` (bearer API token checked, an audit event per request,
written in batches) versus without, same run, same data.

    python benchmarks/auth.py [--seconds 5] [--rounds 3] [--clients 4]

Two archives run side by side on loopback, seeded with the same instances over STOW-RS
(CT slices 512 x 512 16-bit for frames; small single-instance studies for searches);
one has ``PICTOR_AUTH=true`` and a read,write token made with ``pictor token create``. The
measurements alternate between them, round after round, so that both see the same
machine state; every answer is checked (status, result count, frame size), and at the
end the audit rows are counted. Besides requests per second (at the mercy of whatever
else the machine runs), each measurement records the CPU time the archive's processes
and its PostgreSQL spent per request, which other load disturbs much less.
Target: less than 10 % slower with auth and audit on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import msgspec
import psutil
import uvloop

from _client import Connection, stow
from server import PictorProcess, postmaster_pid
from synth import ct_slice, new_uids, sop_instance_uid

STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ROOT = Path(__file__).resolve().parents[1]


async def load(
    port: int,
    paths: list[str],
    accept: str,
    clients: int,
    seconds: float,
    check: Callable[[int, bytes], None],
    authorization: str | None,
    server: PictorProcess,
) -> tuple[float, float, float]:
    """GET the paths round robin with ``clients`` keep-alive connections for ``seconds``
    (after a short warm-up); returns requests per second and the CPU time per request
    (microseconds) of the archive's processes and of its PostgreSQL."""
    count = 0
    stop = 0.0

    async def client(k: int, conn: Connection) -> None:
        nonlocal count
        i = k
        while time.perf_counter() < stop:
            status, _, body = await conn.get(paths[i % len(paths)], accept)
            check(status, body)
            count += 1
            i += clients

    conns = [Connection("127.0.0.1", port, authorization=authorization) for _ in range(clients)]
    try:
        stop = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
        count = 0
        stop = time.perf_counter() + seconds
        start = time.perf_counter()
        app0, pg0 = cpu_seconds(server)
        await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
        elapsed = time.perf_counter() - start
        # the audit rows of these requests are written within 0.5 s: their cost counts
        await asyncio.sleep(0.7)
        app1, pg1 = cpu_seconds(server)
        return count / elapsed, (app1 - app0) / count * 1e6, (pg1 - pg0) / count * 1e6
    finally:
        for conn in conns:
            await conn.close()


def embedded_dsn(data_dir: Path) -> str:
    lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}"


async def audit_rows(data_dir: Path) -> int:
    conn = await asyncpg.connect(embedded_dsn(data_dir))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_event"))
    finally:
        await conn.close()


def cpu_seconds(server: PictorProcess) -> tuple[float, float]:
    """CPU time so far of the archive's processes, and of its PostgreSQL (the postmaster
    and its backends, autovacuum included): what requests cost, whatever else the
    machine is doing."""

    def total(pids: list[int]) -> float:
        out = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                out += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return out

    pg = postmaster_pid(server.data_dir)
    pg_pids = [] if pg is None else [pg] + [c.pid for c in psutil.Process(pg).children(True)]
    return total(server.pids()), total(pg_pids)


def make_token(data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "token",
            "create",
            "--name",
            "bench",
            "--scopes",
            "read,write",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=100, help="CT slices for frames")
    parser.add_argument("--studies", type=int, default=300, help="studies for searches")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="server processes (0: default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    uvloop.install()

    study, series = new_uids()
    slices = [ct_slice(study, series, i, seed=i) for i in range(args.slices)]
    small = []
    for n in range(args.studies):
        s, se = new_uids()
        small.append(ct_slice(s, se, 0, rows=16, cols=16, patient_id=f"BENCH{n % 100:03d}"))
    frame_paths = [
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop_instance_uid(series, i)}/frames/1"
        for i in range(args.slices)
    ]
    frame_size = 512 * 512 * 2
    qido_paths = [f"/dicom-web/studies?PatientID=BENCH{n:03d}" for n in range(100)]
    per_patient = args.studies // 100

    def check_frame(status: int, body: bytes) -> None:
        if status != 200 or len(body) < frame_size:
            raise RuntimeError(f"frame answered {status}, {len(body)} bytes")

    def check_qido(status: int, body: bytes) -> None:
        if status != 200 or len(msgspec.json.decode(body)) != per_patient:
            raise RuntimeError(f"search answered {status}: {body[:200]!r}")

    with tempfile.TemporaryDirectory(prefix="pictor-auth-bench-") as tmp:
        root = Path(tmp)
        plain = PictorProcess(root / "plain", workers=args.workers).start()
        secured = PictorProcess(
            root / "secured", workers=args.workers, env={"PICTOR_AUTH": "true"}
        ).start()
        try:
            bearer = f"Bearer {make_token(secured.data_dir)}"
            servers = {"off": (plain, None), "on": (secured, bearer)}
            for server, auth in servers.values():
                asyncio.run(stow(server.port, slices + small, auth))
            rates: dict[str, dict[str, list[float]]] = {
                m: {"off": [], "on": []} for m in ("qido", "frames")
            }
            cpus: dict[str, dict[str, list[float]]] = {
                m: {"off": [], "on": []} for m in ("qido", "frames")
            }
            split: dict[str, dict[str, list[tuple[float, float]]]] = {
                m: {"off": [], "on": []} for m in ("qido", "frames")
            }
            for r in range(args.rounds):
                order = ("off", "on") if r % 2 == 0 else ("on", "off")
                for measure, paths, accept, check in (
                    ("qido", qido_paths, "application/dicom+json", check_qido),
                    ("frames", frame_paths, STAR, check_frame),
                ):
                    for mode in order:
                        server, auth = servers[mode]
                        rate, cpu_app, cpu_pg = asyncio.run(
                            load(
                                server.port,
                                paths,
                                accept,
                                args.clients,
                                args.seconds,
                                check,
                                auth,
                                server,
                            )
                        )
                        rates[measure][mode].append(rate)
                        cpus[measure][mode].append(cpu_app + cpu_pg)
                        split[measure][mode].append((cpu_app, cpu_pg))
                        print(
                            f"round {r + 1} {measure:6} auth {mode:3}: {rate:8.1f} req/s; CPU "
                            f"per request {cpu_app:5.0f} us server + {cpu_pg:4.0f} us PostgreSQL",
                            flush=True,
                        )
            time.sleep(1.5)  # the audit writer flushes every 0.5 s
            rows = asyncio.run(audit_rows(secured.data_dir))
        finally:
            plain.stop()
            secured.stop()

    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "audit_rows": rows,
    }
    for measure, modes in rates.items():
        off, on = statistics.median(modes["off"]), statistics.median(modes["on"])
        ratios = [b / a for a, b in zip(modes["off"], modes["on"])]
        ratio = statistics.median(ratios)
        cpu_off = statistics.median(cpus[measure]["off"])
        cpu_on = statistics.median(cpus[measure]["on"])
        results[measure] = {
            "off_req_s": round(off, 1),
            "on_req_s": round(on, 1),
            "ratio_median_of_rounds": round(ratio, 3),
            "ratios_by_round": [round(x, 3) for x in ratios],
            "cpu_us_per_request_off": round(cpu_off),
            "cpu_us_per_request_on": round(cpu_on),
            "cpu_overhead_pct": round(100 * (cpu_on / cpu_off - 1), 1),
            "cpu_us_server_pg_off": [
                round(statistics.median(x[i] for x in split[measure]["off"])) for i in (0, 1)
            ],
            "cpu_us_server_pg_on": [
                round(statistics.median(x[i] for x in split[measure]["on"])) for i in (0, 1)
            ],
            "target": "PASS" if ratio >= 0.90 else "MISSED",
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
