"""Lifecycle operations on the 1M-instance index, and QIDO-RS latency while they run.

Usage: python benchmarks/lifecycle.py --seed-dir DIR [--instances 1000] [--seconds 10]
       [--clients 16]

On the seeded index of ``benchmarks/qido.py`` (100,000 studies / 1,000,000 instances;
``--seed-dir`` as there, seeded first if it is not), a study of ``--instances`` real CT
instances is stored under a patient no query of the load matches. Then, each phase for
``--seconds`` while ``--clients`` keep-alive clients send the QIDO-RS searches of
``qido.py`` (types a-f, h, i: the 25 ms targets; answers verified):

* baseline: the load alone;
* update: the study's PatientName corrected, every ``--gap`` seconds (``POST
  /admin/studies/{study}/update``);
* delete: the study deleted (``DELETE /dicom-web/studies/{study}``, into the trash) and
  restored (``POST /admin/trash/restore``), one every ``--gap`` seconds;
* purge: the study deleted, then the trash emptied (``DELETE /admin/trash``: its files
  and rows), once;
* after: the load alone again (what the machine drifted meanwhile).

For each operation: time to complete (the HTTP answer), time to visible / invisible
(a separate poller asks QIDO for the study every few ms and notes when its answer
changes), the QIDO p95 per type over the phase, and the p95 of the QIDO requests that
overlapped an operation. Target (the issue's): QIDO p95 under 25 ms while they run;
qido.py's own targets per type (25 ms; 50 ms for OHIF's study list) apply to the
baseline, measured in the same run.
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

import asyncpg
import msgspec
import uvloop
from qido import SEEDED, TYPES, Spec, build_specs, percentile, verify

from _client import Connection, stow
from conftest import embedded_dsn
from server import PictorProcess, stop_postgres
from synth import ct_slice, new_uids

TARGETS = {key: target for key, _, target in TYPES}  # qido.py's p95 targets (ms)
#: (start, end) of each operation of the running phase
WINDOWS: list[tuple[float, float]] = []
PATIENT = "ZZLIFECYCLE^BENCH"


class Load:
    """QIDO clients running until stopped, query type after query type (as qido.py
    measures them); latencies and wrong answers kept per type."""

    def __init__(self, port: int, specs: dict[str, list[Spec]], clients: int) -> None:
        self.conns = [Connection("127.0.0.1", port) for _ in range(clients)]
        self.specs = specs
        self.latencies: dict[str, list[float]] = {}
        #: (start, end, type) of every request
        self.spans: list[tuple[float, float, str]] = []
        self.wrong: list[str] = []
        self.answers: list[tuple[Spec, int, dict[str, str], bytes]] = []
        self.running = True
        self._next = 0
        self._type = ""

    async def _client(self, conn: Connection) -> None:
        while self.running:
            kind = self._type
            specs = self.specs[kind]
            spec = specs[self._next % len(specs)]
            self._next += 1
            t0 = time.perf_counter()
            status, headers, body = await conn.get(spec.path)
            t1 = time.perf_counter()
            if kind == self._type:  # a request that straddles two types counts for none
                self.latencies[kind].append(t1 - t0)
                self.spans.append((t0, t1, kind))
            # verified after the phase, as qido.py does: checking here would take the
            # client's CPU from the two cores the server and PostgreSQL share
            self.answers.append((spec, status, headers, body))

    async def run(self, seconds: float, work: Any = None) -> dict[str, Any]:
        """``seconds`` per query type; ``work(deadline)`` runs meanwhile, until the end."""
        kinds = list(self.specs)
        self.latencies = {k: [] for k in kinds}
        self.spans = []
        self.wrong, self.running, self._type = [], True, kinds[0]
        tasks = [asyncio.ensure_future(self._client(c)) for c in self.conns]
        started = time.perf_counter()
        total = seconds * len(kinds)
        operations = asyncio.ensure_future(work(started + total)) if work is not None else None
        for i, kind in enumerate(kinds):
            self._type = kind
            await asyncio.sleep(max(0.0, started + (i + 1) * seconds - time.perf_counter()))
        self.running = False
        await asyncio.gather(*tasks)
        result = await operations if operations is not None else None
        for spec, status, headers, body in self.answers:
            problem = verify(spec, status, headers, body)
            if problem is not None:
                self.wrong.append(f"{spec.path}: {problem}")
        self.answers = []
        per_type = {}
        for kind in kinds:
            lat = sorted(x * 1000 for x in self.latencies[kind])
            per_type[kind] = {
                "requests": len(lat),
                "p50_ms": round(percentile(lat, 50), 2),
                "p95_ms": round(percentile(lat, 95), 2),
                "target_p95_ms": TARGETS[kind],
            }
        out = {"qido": per_type, "qido_wrong": len(self.wrong), "operations": result}
        windows = WINDOWS[:]
        WINDOWS.clear()
        if windows:
            # the requests that overlapped an operation, whatever their type, against the
            # same requests' types measured without one (baseline) by the caller
            during = [
                (t1 - t0, kind)
                for t0, t1, kind in self.spans
                if any(t0 < end and t1 > start for start, end in windows)
            ]
            lat = sorted(x * 1000 for x, _ in during)
            out["during_operations"] = {
                "requests": len(lat),
                "p50_ms": round(percentile(lat, 50), 2),
                "p95_ms": round(percentile(lat, 95), 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "by_type": {
                    k: round(percentile(sorted(x * 1000 for x, t in during if t == k), 95), 2)
                    for k in kinds
                    if any(t == k for _, t in during)
                },
            }
        return out

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
        WINDOWS.append((t0, t0 + done))
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


async def _forget_earlier_runs(server: PictorProcess) -> None:
    """Studies an earlier run of this benchmark left (interrupted): deleted and purged,
    so that the index is the seeded one plus this run's study."""
    conn = await asyncpg.connect(embedded_dsn(server.data_dir))
    try:
        left = [
            r[0]
            for r in await conn.fetch("SELECT study_uid FROM study WHERE patient_id = 'ZZLC-1'")
        ]
    finally:
        await conn.close()
    client = Connection("127.0.0.1", server.port)
    try:
        for study in left:
            await client.request("DELETE", f"/dicom-web/studies/{study}")
        status, _ = await client.request("DELETE", "/admin/trash")
        assert status == 200
    finally:
        await client.close()
    if left:
        print(f"removed {len(left)} studies an earlier run left")


async def bench(server: PictorProcess, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    specs_by_type = await build_specs(embedded_dsn(server.data_dir), rng, 400)
    specs = {k: v for k, v in specs_by_type.items() if k in args.types}
    await _forget_earlier_runs(server)
    study, series = new_uids()
    files = [
        ct_slice(study, series, i, rows=64, cols=64, patient_id="ZZLC-1", patient_name=PATIENT)
        for i in range(args.instances)
    ]
    t0 = time.perf_counter()
    await stow(server.port, files, batch=50)
    print(f"stored the {args.instances}-instance study in {time.perf_counter() - t0:.1f} s")
    del files
    load = Load(server.port, specs, args.clients)
    port = server.port
    results: dict[str, Any] = {}
    try:
        await load.run(args.warmup / len(specs))  # warm-up: the seeded tables into memory
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
                await asyncio.sleep(args.gap)
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
                        lambda body: study.encode() not in body,
                    )
                )
                await asyncio.sleep(args.gap)
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
                await asyncio.sleep(args.gap)
            return {"delete": _summary(deleted), "restore": _summary(restored)}

        results["delete"] = await load.run(args.seconds, deletes)
        report("delete+restore", results["delete"])

        async def purge(deadline: float) -> dict[str, Any]:
            gone = await _timed(
                port,
                "DELETE",
                f"/dicom-web/studies/{study}",
                None,
                study,
                lambda b: study.encode() not in b,
            )
            conn = Connection("127.0.0.1", port)
            try:
                t0 = time.perf_counter()
                status, body = await conn.request("DELETE", "/admin/trash", b"", "application/json")
                seconds = time.perf_counter() - t0
                WINDOWS.append((t0, t0 + seconds))
            finally:
                await conn.close()
            return {
                "delete": _summary([gone]),
                "purge_ms": round(seconds * 1000, 1),
                "purged": msgspec.json.decode(body).get("purged")
                if status == 200
                else body[:200].decode(),
            }

        results["purge"] = await load.run(args.seconds, purge)
        report("delete+purge", results["purge"])
        # the load alone again: how much of a difference is the machine drifting
        results["after"] = await load.run(args.seconds)
        report("after", results["after"])
    finally:
        await load.close()
    return results


def report(name: str, r: dict[str, Any]) -> None:
    cells = []
    for kind, q in r["qido"].items():
        mark = "" if q["p95_ms"] < q["target_p95_ms"] else "!"
        cells.append(f"{kind} {q['p95_ms']:.1f}{mark}")
    print(f"  {name:<15} QIDO p95 ms: {'  '.join(cells)}  (wrong {r['qido_wrong']})", flush=True)
    if "during_operations" in r:
        d = r["during_operations"]
        print(
            f"  {'':<15} requests overlapping an operation: {d['requests']}, p50 "
            f"{d['p50_ms']:.1f}, p95 {d['p95_ms']:.1f}, p99 {d['p99_ms']:.1f} ms; p95 by type "
            f"{d['by_type']}",
            flush=True,
        )
    if r["operations"]:
        print(f"  {'':<15} {json.dumps(r['operations'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed-dir", type=Path, required=True, help="qido.py's seeded directory")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per query type")
    parser.add_argument("--types", default="abcdefghi", help="qido.py's query types to run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--gap", type=float, default=1.0, help="seconds between two operations (0: back to back)"
    )
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load first")
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
    server = PictorProcess(data, workers=0, env=SEEDED, log_path=root / "server.log").start()
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
