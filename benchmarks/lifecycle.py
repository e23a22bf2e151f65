"""Lifecycle operations on the 1M-instance index, and QIDO-RS latency while they run.

Usage: python benchmarks/lifecycle.py --seed-dir DIR [--instances 1000] [--seconds 10]
       [--clients 16]

On the seeded index of ``benchmarks/qido.py`` (100,000 studies / 1,000,000 instances;
``--seed-dir`` as there, seeded first if it is not), a study of ``--instances`` real CT
instances is stored under a patient no query of the load matches. Then, each phase for
``--seconds`` while ``--clients`` keep-alive clients send the QIDO-RS searches of
``qido.py`` (types a-f, h, i: the 25 ms targets; answers verified):

* baseline: the load alone;
* update: the study's PatientName corrected again and again (``POST
  /admin/studies/{study}/update``);
* delete: the study deleted (``DELETE /dicom-web/studies/{study}``, into the trash) and
  restored (``POST /admin/trash/restore``) again and again;
* purge: the study deleted, then the trash emptied (``DELETE /admin/trash``: its files
  and rows), once.

For each operation: time to complete (the HTTP answer), time to visible / invisible
(a separate poller asks QIDO for the study every few ms and notes when its answer
changes), and the QIDO p95 over the phase. Target: p95 under 25 ms during them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from qido import Spec, build_specs, percentile, verify

from _client import Connection, stow
from conftest import embedded_dsn
from server import PictorProcess, stop_postgres
from synth import ct_slice, new_uids

MIX = "abcdefhi"  # qido.py's types with the 25 ms target (g, OHIF's list, has 50)
TARGET_MS = 25.0
PATIENT = "ZZLIFECYCLE^BENCH"


class Load:
    """QIDO clients running until stopped; latencies and wrong answers kept per phase."""

    def __init__(self, port: int, specs: list[Spec], clients: int) -> None:
        self.conns = [Connection("127.0.0.1", port) for _ in range(clients)]
        self.specs = specs
        self.latencies: list[float] = []
        self.wrong: list[str] = []
        self.running = True
        self._next = 0

    async def _client(self, conn: Connection) -> None:
        while self.running:
            spec = self.specs[self._next % len(self.specs)]
            self._next += 1
            t0 = time.perf_counter()
            status, headers, body = await conn.get(spec.path)
            self.latencies.append(time.perf_counter() - t0)
            problem = verify(spec, status, headers, body)
            if problem is not None:
                self.wrong.append(f"{spec.path}: {problem}")

    async def run(self, seconds: float, work: Any = None) -> dict[str, Any]:
        self.latencies, self.wrong, self.running = [], [], True
        tasks = [asyncio.ensure_future(self._client(c)) for c in self.conns]
        started = time.perf_counter()
        result = None
        if work is not None:
            result = await work(started + seconds)
        await asyncio.sleep(max(0.0, started + seconds - time.perf_counter()))
        self.running = False
        await asyncio.gather(*tasks)
        lat = sorted(x * 1000 for x in self.latencies)
        return {
            "qido_requests": len(lat),
            "qido_p50_ms": round(percentile(lat, 50), 2),
            "qido_p95_ms": round(percentile(lat, 95), 2),
            "qido_p99_ms": round(percentile(lat, 99), 2),
            "qido_wrong": len(self.wrong),
            "operations": result,
        }

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.conns))


async def _study_answer(conn: Connection, study: str) -> bytes:
    status, _, body = await conn.get(
        f"/dicom-web/studies?StudyInstanceUID={study}&includefield=00100010"
    )
    return body if status == 200 else b""


async def _timed(
    port: int, method: str, path: str, body: Any, study: str, changed: Any
) -> tuple[float, float]:
    """(seconds to the answer, seconds until a QIDO poller saw ``changed``)."""
    conn, poller = Connection("127.0.0.1", port), Connection("127.0.0.1", port)
    try:
        seen: list[float] = []

        async def poll(t0: float) -> None:
            while True:
                if changed(await _study_answer(poller, study)):
                    seen.append(time.perf_counter() - t0)
                    return
                await asyncio.sleep(0.002)

        t0 = time.perf_counter()
        watcher = asyncio.ensure_future(poll(t0))
        payload = msgspec.json.encode(body) if body is not None else b""
        status, answer = await conn.request(method, path, payload, "application/json")
        done = time.perf_counter() - t0
        if status not in (200, 204):
            raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")
        await asyncio.wait_for(watcher, 30)
        return done, seen[0]
    finally:
        await conn.close()
        await poller.close()


def _summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    complete = sorted(p[0] * 1000 for p in pairs)
    visible = sorted(p[1] * 1000 for p in pairs)
    return {
        "count": len(pairs),
        "complete_ms_median": round(complete[len(complete) // 2], 1) if pairs else None,
        "complete_ms_max": round(complete[-1], 1) if pairs else None,
        "seen_ms_median": round(visible[len(visible) // 2], 1) if pairs else None,
        "seen_ms_max": round(visible[-1], 1) if pairs else None,
    }


async def bench(server: PictorProcess, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    specs_by_type = await build_specs(embedded_dsn(server.data_dir), rng, 400)
    mix = [s for k in MIX for s in specs_by_type[k]]
    rng.shuffle(mix)
    study, series = new_uids()
    files = [
        ct_slice(study, series, i, rows=64, cols=64, patient_id="ZZLC-1", patient_name=PATIENT)
        for i in range(args.instances)
    ]
    t0 = time.perf_counter()
    await stow(server.port, files, batch=50)
    print(f"stored the {args.instances}-instance study in {time.perf_counter() - t0:.1f} s")
    del files
    load = Load(server.port, mix, args.clients)
    port = server.port
    results: dict[str, Any] = {}
    try:
        await load.run(3)  # warm-up
        results["baseline"] = await load.run(args.seconds)
        report("baseline", results["baseline"])

        async def updates(deadline: float) -> dict[str, Any]:
            pairs, n = [], 0
            while time.perf_counter() < deadline:
                name = f"ZZLIFECYCLE^BENCH{n}"
                n += 1
                pairs.append(
                    await _timed(
                        port,
                        "POST",
                        f"/admin/studies/{study}/update",
                        {"PatientName": {"vr": "PN", "Value": [{"Alphabetic": name}]}},
                        study,
                        lambda body, name=name: name.encode() in body,
                    )
                )
            return _summary(pairs)

        results["update"] = await load.run(args.seconds, updates)
        report("update", results["update"])

        async def deletes(deadline: float) -> dict[str, Any]:
            deleted, restored = [], []
            while time.perf_counter() < deadline:
                deleted.append(
                    await _timed(
                        port,
                        "DELETE",
                        f"/dicom-web/studies/{study}",
                        None,
                        study,
                        lambda body: body == b"",
                    )
                )
                restored.append(
                    await _timed(
                        port,
                        "POST",
                        "/admin/trash/restore",
                        {"study": study},
                        study,
                        lambda body: study.encode() in body,
                    )
                )
            return {"delete": _summary(deleted), "restore": _summary(restored)}

        results["delete"] = await load.run(args.seconds, deletes)
        report("delete+restore", results["delete"])

        async def purge(deadline: float) -> dict[str, Any]:
            gone = await _timed(
                port, "DELETE", f"/dicom-web/studies/{study}", None, study, lambda b: b == b""
            )
            conn = Connection("127.0.0.1", port)
            try:
                t0 = time.perf_counter()
                status, body = await conn.request("DELETE", "/admin/trash", b"", "application/json")
                seconds = time.perf_counter() - t0
            finally:
                await conn.close()
            return {
                "delete": _summary([gone]),
                "purge_ms": round(seconds * 1000, 1),
                "purged": msgspec.json.decode(body).get("purged")
                if status == 200
                else body[:200].decode(),
            }

        results["purge"] = await load.run(min(args.seconds, 5), purge)
        report("delete+purge", results["purge"])
    finally:
        await load.close()
    return results


def report(name: str, r: dict[str, Any]) -> None:
    ok = "pass" if r["qido_p95_ms"] < TARGET_MS and not r["qido_wrong"] else "FAIL"
    print(
        f"  {name:<16} QIDO {r['qido_requests']:>6} req  p50 {r['qido_p50_ms']:6.2f}  p95 "
        f"{r['qido_p95_ms']:6.2f}  p99 {r['qido_p99_ms']:6.2f} ms  wrong {r['qido_wrong']}  "
        f"[{ok}]  {json.dumps(r['operations']) if r['operations'] else ''}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed-dir", type=Path, required=True, help="qido.py's seeded directory")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "lifecycle.json"
    )
    args = parser.parse_args()
    root = args.seed_dir.resolve()
    if not (root / "seeded.json").exists():
        print("seeding first (benchmarks/qido.py --no-load)", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "qido.py"),
                "--seed-dir",
                str(root),
                "--no-load",
            ],
            check=True,
        )
    data = root / "data"
    server = PictorProcess(data, workers=0, log_path=root / "server.log").start()
    try:
        results = uvloop.run(bench(server, args))
    finally:
        server.stop()
        stop_postgres(data)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "instances": args.instances,
        "clients": args.clients,
        "seconds": args.seconds,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
