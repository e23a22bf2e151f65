"""DIMSE shim: C-STORE throughput next to STOW-RS, and C-FIND study-level latency.

Usage: python benchmarks/dimse.py [--instances 500] [--clients 4] [--batch 10]
       [--seed-dir DIR | --studies 20000 --seed-instances 200000] [--requests 200]

1. Throughput, on a fresh server (new data directory, embedded PostgreSQL, DIMSE on a
   loopback port): the same synthetic CT series (512x512 16-bit slices from
   ``tests/synth.py``) is stored twice, under two series UIDs, in alternating order over
   ``--rounds`` rounds: by dcmtk ``storescu`` (``--clients`` processes at once, each one
   association sending its share of the files, one C-STORE at a time as a modality
   does), and by STOW-RS (``--clients`` keep-alive connections, ``--batch`` instances per
   request, the pattern of ``stow_ingest.py``). Instances/s each; every instance must be
   in the index afterwards (counted in PostgreSQL), else the run fails.
2. C-FIND latency, on an index seeded by ``benchmarks/qido.py``'s seeder (``--seed-dir``
   reuses a seeded directory, e.g. the QIDO benchmark's 100,000 studies; otherwise a
   temporary one with ``--studies`` / ``--seed-instances`` is seeded): Study Root
   STUDY-level C-FINDs from one pynetdicom association, one after another: (a) PatientID,
   (b) PatientName prefix wildcard, (c) StudyDate range; each returns the requested keys
   (7 of them). The same searches as QIDO-RS over HTTP alongside, for reference.
   p50 / p95 / p99 in ms; every answer's count is checked against the QIDO answer.

Results are also written to benchmarks/results/dimse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import uvloop
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from qido import SEEDED, seed

from app.dimse.network import no_delay

from _client import MULTIPART, Connection, multipart_body
from conftest import embedded_dsn
from server import PictorProcess, free_port, status_kib, stop_postgres
from stow_ingest import run_requests
from synth import big_multiframe, ct_slice, new_uids

STORESCU = "/usr/bin/storescu"  # dcmtk's; PATH may hold another
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_KEYS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


async def count_series(dsn: str, series: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM instance i JOIN series se ON se.pk = i.series_pk"
                " WHERE se.series_uid = $1",
                series,
            )
        )
    finally:
        await conn.close()


def storescu(port: int, folders: list[Path]) -> float:
    """All folders at once, one storescu association each; seconds until all are done."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                f"BENCH{i}",
                "-aec",
                "PICTOR",
                "127.0.0.1",
                str(port),
                "+sd",
                str(f),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i, f in enumerate(folders)
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-2000:]}")
    return elapsed


def throughput(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    dimse_port = free_port()
    server = PictorProcess(
        root / "data", workers=args.workers, env={"PICTOR_DIMSE_PORT": str(dimse_port)}
    ).start()
    results: dict[str, list[float]] = {"c_store": [], "stow": []}
    try:
        dsn = embedded_dsn(server.data_dir)
        size = 0
        associations = association_rate(dimse_port, args.associations)
        print(f"  associations (C-ECHO, one at a time): {associations:7.1f} /s", flush=True)
        big = big_instance(root, server, dimse_port, args.big_bytes) if args.big_bytes else None
        for r in range(args.rounds):
            for kind in ("c_store", "stow") if r % 2 == 0 else ("stow", "c_store"):
                study, series = new_uids()
                slices = [ct_slice(study, series, i) for i in range(args.instances)]
                size = len(slices[0])
                if kind == "c_store":
                    folders = [root / f"r{r}-c{c}" for c in range(args.clients)]
                    for c, folder in enumerate(folders):
                        folder.mkdir()
                        for i in range(c, args.instances, args.clients):
                            (folder / f"{i:05d}.dcm").write_bytes(slices[i])
                    seconds = storescu(dimse_port, folders)
                    for folder in folders:
                        shutil.rmtree(folder)
                else:
                    bodies = [
                        multipart_body(slices[i : i + args.batch])
                        for i in range(0, len(slices), args.batch)
                    ]
                    seconds, _ = uvloop.run(
                        run_requests(server.port, bodies, args.clients, MULTIPART)
                    )
                stored = uvloop.run(count_series(dsn, series))
                if stored != args.instances:
                    raise RuntimeError(f"{kind}: {stored} of {args.instances} in the index")
                results[kind].append(args.instances / seconds)
                print(
                    f"  {kind:8} round {r + 1}: {args.instances / seconds:7.1f} instances/s",
                    flush=True,
                )
    finally:
        server.stop()
    return {
        "instances_per_round": args.instances,
        "instance_bytes": size,
        "clients": args.clients,
        "stow_batch": args.batch,
        "c_store_rounds": [round(x, 1) for x in results["c_store"]],
        "stow_rounds": [round(x, 1) for x in results["stow"]],
        "c_store_median": round(statistics.median(results["c_store"]), 1),
        "stow_median": round(statistics.median(results["stow"]), 1),
        "ratio_median": round(
            statistics.median(results["c_store"]) / statistics.median(results["stow"]), 3
        ),
        "associations_per_s": round(associations, 1),
        "big_instance": big,
    }


def association_rate(port: int, n: int) -> float:
    """Associations a second, one after another, each one C-ECHO (PS3.7 9.1.5) then
    A-RELEASE: what a modality that opens an association per instance or per study
    pays before it sends anything."""
    ae = AE(ae_title="BENCHECHO")
    ae.add_requested_context("1.2.840.10008.1.1")
    start = time.perf_counter()
    for _ in range(n):
        assoc = ae.associate("127.0.0.1", port, ae_title="PICTOR")
        if not assoc.is_established:
            raise RuntimeError("association refused")
        if assoc.send_c_echo().Status != 0:
            raise RuntimeError("C-ECHO failed")
        assoc.release()
    return n / (time.perf_counter() - start)


def big_instance(root: Path, server: PictorProcess, port: int, size: int) -> dict[str, Any]:
    """One multi-frame instance of about ``size`` bytes by storescu: MB/s, and how much
    the DIMSE process's peak RSS rose (VmHWM, reset first through clear_refs)."""
    path = big_multiframe(root / "big.dcm", size)
    [pid] = server.children("app.dimse")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = status_kib(pid, "VmHWM")
    start = time.perf_counter()
    subprocess.run(
        [STORESCU, "-aet", "BENCHBIG", "-aec", "PICTOR", "127.0.0.1", str(port), str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    grown = (status_kib(pid, "VmHWM") - before) / 1024
    real = path.stat().st_size
    path.unlink()
    print(
        f"  one {real / 1e9:.2f} GB instance: {real / 1e6 / seconds:.0f} MB/s, DIMSE peak RSS "
        f"+{grown:.0f} MiB",
        flush=True,
    )
    return {
        "bytes": real,
        "mb_per_s": round(real / 1e6 / seconds, 1),
        "rss_growth_mib": round(grown),
    }


async def pick_values(dsn: str, rng: random.Random, n: int) -> dict[str, list[dict[str, str]]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT patient_id, patient_name, study_date FROM study"
            " WHERE patient_id IS NOT NULL AND patient_name IS NOT NULL AND study_date IS NOT NULL"
            " ORDER BY md5(study_uid) LIMIT $1",
            n,
        )
    finally:
        await conn.close()
    out: dict[str, list[dict[str, str]]] = {"a": [], "b": [], "c": []}
    for r in rows:
        out["a"].append({"PatientID": r["patient_id"]})
        family = r["patient_name"].split("^")[0]
        out["b"].append({"PatientName": family[: max(3, min(len(family), 4))] + "*"})
        day = r["study_date"]
        out["c"].append({"StudyDate": f"{day}-{day}"})
    rng.shuffle(out["b"])
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def find_latency(args: argparse.Namespace, seed_root: Path) -> dict[str, Any]:
    seed_root.mkdir(parents=True, exist_ok=True)
    data = seed_root / "data"
    marker = seed_root / "seeded.json"
    dimse_port = free_port()
    env = {"PICTOR_DIMSE_PORT": str(dimse_port), **SEEDED}
    if not marker.exists():
        print(
            f"seeding {seed_root}: {args.studies:,} studies, {args.seed_instances:,} instances",
            flush=True,
        )
        server = PictorProcess(data, workers=1, env=env, log_path=seed_root / "server.log").start()
        seed_args = argparse.Namespace(studies=args.studies, instances=args.seed_instances, seed=1)
        try:
            info = uvloop.run(seed(embedded_dsn(data), seed_args))
        finally:
            server.stop()
        marker.write_text(json.dumps(info, indent=2) + "\n")
    info = json.loads(marker.read_text())
    print(f"C-FIND on {info['counts']}", flush=True)
    server = PictorProcess(
        data, workers=args.workers, env=env, log_path=seed_root / "server.log"
    ).start()
    try:
        values = uvloop.run(pick_values(embedded_dsn(data), random.Random(7), args.requests + 20))
        ae = AE(ae_title="BENCHFIND")
        ae.add_requested_context(STUDY_ROOT_FIND)
        # Nagle off on the client too, as dcmtk does by default (see app/dimse/network.py)
        assoc = ae.associate(
            "127.0.0.1", dimse_port, ae_title="PICTOR", evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
        )
        assert assoc.is_established
        http = Connection("127.0.0.1", server.port)
        loop = uvloop.new_event_loop()  # one loop: the HTTP connection is kept alive
        labels = {"a": "PatientID exact", "b": "PatientName prefix*", "c": "StudyDate one day"}
        out: dict[str, Any] = {}
        try:
            for key, label in labels.items():
                find_ms: list[float] = []
                qido_ms: list[float] = []
                matches: list[int] = []
                for n, keys in enumerate(values[key]):
                    query = Dataset()
                    query.SpecificCharacterSet = "ISO_IR 192"  # names like MÜL*
                    query.QueryRetrieveLevel = "STUDY"
                    for k in FIND_KEYS:
                        setattr(query, k, "")
                    for k, v in keys.items():
                        setattr(query, k, v)
                    t0 = time.perf_counter()
                    answers = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
                    t1 = time.perf_counter()
                    statuses = [int(s.Status) for s, _ in answers]
                    if statuses[-1] != 0:
                        raise RuntimeError(f"C-FIND {keys}: final status {statuses[-1]:04X}")
                    params = "&".join(f"{k}={quote(v)}" for k, v in keys.items())
                    t2 = time.perf_counter()
                    status, _, body = loop.run_until_complete(
                        http.get(f"/dicom-web/studies?{params}&limit=10000&includefield=00201208")
                    )
                    t3 = time.perf_counter()
                    if status != 200 or len(json.loads(body)) != len(statuses) - 1:
                        raise RuntimeError(
                            f"C-FIND {keys}: {len(statuses) - 1} matches, QIDO {status}"
                        )
                    if n >= 20:  # after a warm-up
                        find_ms.append((t1 - t0) * 1000)
                        qido_ms.append((t3 - t2) * 1000)
                        matches.append(len(statuses) - 1)
                out[key] = {
                    "query": label,
                    "mean_matches": round(statistics.mean(matches), 1),
                    "c_find_ms": {
                        p: round(percentile(find_ms, q), 1)
                        for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
                    },
                    "qido_ms": {
                        p: round(percentile(qido_ms, q), 1)
                        for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
                    },
                }
                print(f"  ({key}) {label:22} {out[key]}", flush=True)
        finally:
            assoc.release()
            loop.run_until_complete(http.close())
            loop.close()
    finally:
        server.stop()
        stop_postgres(data)
    return {"seed": info["counts"], "requests": args.requests, "types": out}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=500, help="CT slices per round and door")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="HTTP server processes (0: default)")
    parser.add_argument(
        "--seed-dir", type=Path, help="a data directory seeded by benchmarks/qido.py"
    )
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--seed-instances", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=200, help="C-FINDs per query type")
    parser.add_argument(
        "--associations", type=int, default=50, help="associations one after another (C-ECHO)"
    )
    parser.add_argument(
        "--big-bytes", type=int, default=0, help="also store one instance this large (0: no)"
    )
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-find", action="store_true")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "dimse.json"
    )
    args = parser.parse_args()
    if not Path(STORESCU).exists():
        sys.exit("dcmtk's storescu is needed (apt-get install dcmtk)")

    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(
        prefix="pictor-dimse-", dir=os.environ.get("PICTOR_BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        if not args.skip_store:
            print(
                f"C-STORE (storescu x{args.clients}) vs STOW-RS ({args.clients} clients, {args.batch} per request)"
            )
            results["store"] = throughput(args, root / "store")
        if not args.skip_find:
            results["find"] = find_latency(
                args, args.seed_dir.resolve() if args.seed_dir else root / "seed"
            )
    print(json.dumps(results, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
