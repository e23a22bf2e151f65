"""Two ``pictor serve`` nodes behind nginx against one node (issue #16, "several nodes"):
QIDO-RS requests/s and raw frames/s, same run, same data.

    python benchmarks/nodes.py [--instances 300] [--seconds 6] [--rounds 3]
                               [--qido-clients 16] [--frame-clients 8] [--clients N]

One PostgreSQL (Debian's, standalone on 127.0.0.1, as ``tests/standalone_pg.py`` starts
it) and one storage directory (``PICTOR_STORAGE_URL=file:///...``) serve both nodes; each
node has a data directory of its own and the server's default number of processes. Node
A starts alone and is seeded over STOW-RS (``--instances`` CT slices 512 x 512 16-bit,
10 to a study, 3 studies to a patient); then node B starts on the same database and
storage. Three set-ups are measured, in an order that rotates from round to round:

1. node A, direct (node B running but idle);
2. nginx (round robin, keep-alive upstreams) in front of node A only (B idle);
3. nginx in front of nodes A and B.

Measured each time: ``/dicom-web/studies?PatientID=...`` searches (every answer 200,
one patient, exactly as many studies as were stored for that patient) and raw frames
(``transfer-syntax=*``, every answer 200 and at least 512 * 512 * 2 bytes), with the
``load`` of ``wado.py``; requests/s, and the CPU time per request of the server
processes of both nodes, of PostgreSQL (postmaster and backends) and of nginx, which
other load on the machine disturbs much less than requests/s.

What to expect: not 2x. This machine has two cores; one node already has four server
processes (two per core) that can keep both busy, and the benchmark's client, nginx and
PostgreSQL run on the same two cores. A second node on the same box adds no CPU, only
more processes sharing it. What (3) against (2) shows is that nothing serialises between
nodes (a shared lock, a cache stampede, the LISTEN/NOTIFY channel): two nodes should do
about as well as one behind the same proxy (twice the processes on the same two cores
cost a little in switching). (2) against (1) is the cost of the proxy
hop itself (nginx's CPU per request is reported). Capacity grows with nodes on separate
machines; that is not measured here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
import uvloop
from wado import load

from _client import stow
from nginx_proxy import Nginx
from server import PictorProcess
from standalone_pg import StandalonePostgres
from stow_ingest import cpu_seconds
from synth import ct_slice, new_uids, sop_instance_uid

STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
QIDO_ACCEPT = "application/dicom+json"
FRAME_BYTES = 512 * 512 * 2
SLICES_PER_STUDY = 10
STUDIES_PER_PATIENT = 3
SETUPS = ("A direct", "nginx -> A", "nginx -> A+B")

Check = Callable[[int, dict[str, str], bytes], int]


def postgres_pids(pg: StandalonePostgres) -> list[int]:
    """The postmaster (its pid is the first line of ``postmaster.pid``) and its children:
    backends, autovacuum, the WAL writer, the checkpointer."""
    try:
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        parent = psutil.Process(pid)
        return [pid] + [c.pid for c in parent.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return []


def wait_quiet(groups: Callable[[], list[int]], limit: float = 0.05, timeout: float = 30) -> str:
    """Wait until the processes use less than ``limit`` CPU-seconds a second (node B's
    start-up, A's work after the STOW, nginx's workers starting), at most ``timeout``."""
    start = time.monotonic()
    while True:
        pids = groups()
        before = cpu_seconds(pids)
        time.sleep(1)
        rate = cpu_seconds(pids) - before
        waited = time.monotonic() - start
        if rate < limit or waited > timeout:
            return f"{rate:.3f} CPU-s/s after {waited:.0f} s"


def seed(instances: int) -> tuple[list[bytes], list[str], dict[str, int]]:
    """The CT slices, their frame paths and the number of studies of each patient."""
    files: list[bytes] = []
    paths: list[str] = []
    studies_of: Counter[str] = Counter()
    for start in range(0, instances, SLICES_PER_STUDY):
        n_study = start // SLICES_PER_STUDY
        patient = f"NODES{n_study // STUDIES_PER_PATIENT:04d}"
        studies_of[patient] += 1
        study, series = new_uids()
        for i in range(min(SLICES_PER_STUDY, instances - start)):
            files.append(ct_slice(study, series, i, seed=start + i, patient_id=patient))
            sop = sop_instance_uid(series, i)
            paths.append(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1")
    return files, paths, dict(studies_of)


def qido_check(studies_of: dict[str, int]) -> Check:
    def check(status: int, headers: dict[str, str], body: bytes) -> int:
        if status != 200:
            raise RuntimeError(f"search answered {status}: {body[:200]!r}")
        found = msgspec.json.decode(body)
        patients = {s["00100020"]["Value"][0] for s in found} if found else set()
        if len(patients) != 1:
            raise RuntimeError(f"search answered {len(found)} studies of patients {patients}")
        (patient,) = patients
        if len(found) != studies_of.get(patient):
            raise RuntimeError(
                f"search for {patient}: {len(found)} studies, {studies_of.get(patient)} stored"
            )
        return len(body)

    return check


def frame_check(status: int, headers: dict[str, str], body: bytes) -> int:
    if status != 200 or len(body) < FRAME_BYTES:
        raise RuntimeError(f"frame answered {status} with {len(body)} bytes: {body[:200]!r}")
    return len(body)


@dataclass
class Figures:
    """One measurement: requests/s of its measured phase, and CPU microseconds per
    request of each process group over every answer checked (the warm-up included, so
    that CPU and requests cover the same span)."""

    per_s: float
    mb_per_s: float
    p50_ms: float
    cpu_us: dict[str, float]
    upstreams: dict[str, int]  # answers by nginx's X-Upstream ("direct": no proxy)

    @property
    def servers_us(self) -> float:
        return self.cpu_us["node_a"] + self.cpu_us["node_b"]


def measure(
    port: int,
    paths: list[str],
    accept: str,
    clients: int,
    seconds: float,
    check: Check,
    groups: dict[str, list[int]],
) -> Figures:
    answers = 0
    upstreams: Counter[str] = Counter()

    def counted(status: int, headers: dict[str, str], body: bytes) -> int:
        nonlocal answers
        answers += 1
        upstreams[headers.get("x-upstream", "direct")] += 1
        return check(status, headers, body)

    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    n, size, elapsed, latencies = uvloop.run(load(port, paths, accept, clients, seconds, counted))
    after = {name: cpu_seconds(pids) for name, pids in groups.items()}
    latencies.sort()
    return Figures(
        per_s=n / elapsed,
        mb_per_s=size / elapsed / 1e6,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        cpu_us={name: (after[name] - before[name]) / answers * 1e6 for name in groups},
        upstreams=dict(upstreams),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=300, help="CT slices, stored once")
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the order rotating")
    parser.add_argument(
        "--clients", type=int, help="connections for both (default: 16 QIDO, 8 frames)"
    )
    parser.add_argument("--qido-clients", type=int, default=16)
    parser.add_argument("--frame-clients", type=int, default=8)
    parser.add_argument(
        "--proxy-buffer",
        help="nginx proxy_buffer_size, e.g. 512k (default: nginx's own, one page; "
        "tests/e2e/test_nodes.py's set-up)",
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "nodes.json"
    )
    args = parser.parse_args()
    if args.clients:
        args.qido_clients = args.frame_clients = args.clients

    files, frame_paths, studies_of = seed(args.instances)
    qido_paths = [f"/dicom-web/studies?PatientID={p}" for p in sorted(studies_of)]
    tasks = (
        ("qido", qido_paths, QIDO_ACCEPT, args.qido_clients, qido_check(studies_of)),
        ("frames", frame_paths, STAR, args.frame_clients, frame_check),
    )

    root = Path(tempfile.mkdtemp(prefix="pictor-nodes-bench-"))
    pg = StandalonePostgres()
    nodes: list[PictorProcess] = []
    proxies: list[Nginx] = []
    # per_round[r][task][setup]
    per_round: list[dict[str, dict[str, Figures]]] = []
    try:
        pg.start()
        dsn = uvloop.run(pg.new_database())
        storage = root / "storage"
        storage.mkdir()
        env = {"DATABASE_URL": dsn, "PICTOR_STORAGE_URL": f"file://{storage}"}
        a = PictorProcess(root / "node-a", workers=0, env=env)
        nodes.append(a.start(timeout=90))
        t0 = time.perf_counter()
        uvloop.run(stow(a.port, files, batch=10))
        print(
            f"stored {len(files)} CT slices ({len(studies_of)} patients) through node A "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        del files
        b = PictorProcess(root / "node-b", workers=0, env=env)
        nodes.append(b.start(timeout=90))
        front_a = Nginx([a.port], args.proxy_buffer)
        proxies.append(front_a)
        front_ab = Nginx([a.port, b.port], args.proxy_buffer)
        proxies.append(front_ab)
        ports = {SETUPS[0]: a.port, SETUPS[1]: front_a.port, SETUPS[2]: front_ab.port}
        names = {f"127.0.0.1:{a.port}": "A", f"127.0.0.1:{b.port}": "B", "direct": "direct"}
        print(
            f"node A: {len(a.pids())} server processes, node B: {len(b.pids())}; "
            f"node B runs, idle, during '{SETUPS[0]}' and '{SETUPS[1]}'; "
            f"nginx: worker_processes auto ({os.cpu_count()} cores), proxy_buffering off, "
            f"proxy_buffer_size {args.proxy_buffer or 'default'}",
            flush=True,
        )

        def everything() -> list[int]:
            pids = a.pids() + b.pids() + postgres_pids(pg)
            return pids + front_a.pids() + front_ab.pids()

        print(f"waiting until idle: {wait_quiet(everything)}", flush=True)

        for r in range(args.rounds):
            order = SETUPS[r % 3 :] + SETUPS[: r % 3]
            figures: dict[str, dict[str, Figures]] = {}
            for task, paths, accept, clients, check in tasks:
                figures[task] = {}
                for setup in order:
                    groups = {
                        "node_a": a.pids(),
                        "node_b": b.pids(),
                        "postgres": postgres_pids(pg),
                        "nginx": front_a.pids() + front_ab.pids(),
                    }
                    got = measure(ports[setup], paths, accept, clients, args.seconds, check, groups)
                    got.upstreams = {names.get(k, k): v for k, v in got.upstreams.items()}
                    figures[task][setup] = got
                    cpu = got.cpu_us
                    print(
                        f"round {r + 1} {task:6} {setup:13}: {got.per_s:8.1f} req/s "
                        f"({got.mb_per_s:6.1f} MB/s, p50 {got.p50_ms:5.1f} ms); CPU us per "
                        f"request: servers A+B {got.servers_us:4.0f} (A {cpu['node_a']:.0f}, "
                        f"B {cpu['node_b']:.0f}), PostgreSQL {cpu['postgres']:3.0f}, nginx "
                        f"{cpu['nginx']:3.0f}; answers by {got.upstreams}",
                        flush=True,
                    )
            per_round.append(figures)
    except BaseException:
        # the logs live in the directory removed below: show what the servers said
        logs = [("PostgreSQL", pg.root / "log")]
        logs += [(f"node {n}", node.log_path) for n, node in zip("AB", nodes)]
        for name, path in logs:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-40:]
                print(f"--- last lines of the {name} log ({path}):", *tail, sep="\n")
        raise
    finally:
        for proxy in proxies:
            proxy.stop()
        for node in nodes:
            node.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)

    summary: dict[str, object] = {}
    print(f"\nmedians of {args.rounds} round(s):")
    for task, *_ in tasks:
        rows: dict[str, object] = {}
        for setup in SETUPS:
            runs = [fig[task][setup] for fig in per_round]

            def med(values: list[float], digits: int = 1) -> float:
                return round(statistics.median(values), digits)

            cpu_us = {
                "servers_a_b": med([f.servers_us for f in runs], 0),
                **{k: med([f.cpu_us[k] for f in runs], 0) for k in runs[0].cpu_us},
            }
            rows[setup] = {
                "per_s": med([f.per_s for f in runs]),
                "per_s_rounds": [round(f.per_s, 1) for f in runs],
                "mb_per_s": med([f.mb_per_s for f in runs]),
                "p50_ms": med([f.p50_ms for f in runs], 2),
                "cpu_us_per_request": cpu_us,
                "answers_by_upstream_last_round": runs[-1].upstreams,
            }
            unit = "req/s" if task == "qido" else "frames/s"
            print(
                f"  {task:6} {setup:13}: {med([f.per_s for f in runs]):8.1f} {unit} "
                f"(rounds {[round(f.per_s) for f in runs]}); CPU us per request: servers "
                f"A+B {cpu_us['servers_a_b']:.0f}, PostgreSQL {cpu_us['postgres']:.0f}, "
                f"nginx {cpu_us['nginx']:.0f}"
            )

        def ratios(top: str, bottom: str, task: str = task) -> list[float]:
            return [fig[task][top].per_s / fig[task][bottom].per_s for fig in per_round]

        compare = {
            "nginx_A_over_direct_A": ratios(SETUPS[1], SETUPS[0]),
            "nginx_AB_over_direct_A": ratios(SETUPS[2], SETUPS[0]),
            "nginx_AB_over_nginx_A": ratios(SETUPS[2], SETUPS[1]),
        }
        rows["ratios_median_of_rounds"] = {
            k: round(statistics.median(v), 3) for k, v in compare.items()
        }
        rows["ratios_rounds"] = {k: [round(x, 3) for x in v] for k, v in compare.items()}
        summary[task] = rows
        print(f"  {task:6} ratios (median of rounds): {rows['ratios_median_of_rounds']}")

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "instances": args.instances,
        "patients": len(studies_of),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "qido_clients": args.qido_clients,
        "frame_clients": args.frame_clients,
        "server_processes_per_node": "server default (PICTOR_WORKERS unset)",
        "nginx": {
            "worker_processes": "auto",
            "proxy_buffering": "off",
            "proxy_buffer_size": args.proxy_buffer or "default",
        },
        "note": "node B runs, idle, during 'A direct' and 'nginx -> A'; CPU per request "
        "counts both nodes' processes, PostgreSQL's and nginx's (both nginx instances)",
        **summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(msgspec.json.format(msgspec.json.encode(results)).decode() + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
