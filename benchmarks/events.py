"""What webhooks and routes cost ingest (issue #17): STOW-RS with no webhook against
STOW-RS with two active webhooks (and with a receiver that never answers, and with a
route forwarding every instance), in one run.

Usage: python benchmarks/events.py [--instances 400] [--rounds 2] [--clients 4]

One fresh server. Phases alternate (none, two, dead, none, two, dead, ...) so that the
index growing and the machine drifting weigh on each alike; each phase stores
``--instances`` 512x512 CT slices, 10 per request, from ``--clients`` clients. "two":
two webhooks on every event type, each to a receiver on loopback that answers 204 at
once; "dead": one more webhook to a receiver that accepts connections and never
answers; "routed": the two webhooks and a route on ``instance.created`` that forwards
every instance over STOW-RS to a sink on loopback that takes everything (200). After
each phase the benchmark waits until every event of it was delivered and every
instance forwarded (reported: the longest wait per phase), so that no phase leaves
its work to the next. Reported: instances/s per phase (median over rounds), the ratios to "none"
(target: 0.9 or more), the seconds until every event of the last phase was
delivered to the live receivers, and the CPU milliseconds per instance, from the start
of a phase until its work was all delivered, of the HTTP processes, the background
process, PostgreSQL and the benchmark's own receivers (which stand for other machines
but share these cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop

from _client import MULTIPART, Connection, multipart_body
from server import PictorProcess, postmaster_pid
from synth import ct_slice, new_uids

EVENTS = ["instance.created", "study.stable", "study.updated", "study.deleted"]


_RECEIVER = r"""
import asyncio, sys

count = 0

class Hook(asyncio.BufferedProtocol):
    # a body is counted, not kept: the sink's own cost stays out of the figures
    def connection_made(self, transport):
        self.t, self.head, self.left, self.buf = transport, bytearray(), 0, bytearray(1 << 20)

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, n):
        data = memoryview(self.buf)[:n]
        while len(data):
            if self.left:
                take = min(self.left, len(data))
                self.left -= take
                data = data[take:]
                if not self.left:
                    self.answer()
                continue
            self.head += data
            data = data[:0]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            rest = memoryview(bytes(self.head[end + 4:]))
            head = bytes(self.head[:end])
            self.head = bytearray()
            self.kind, self.left = head, 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    self.left = int(v)
            if not self.left:
                self.answer()
            data = rest

    def answer(self):
        global count
        head = self.kind
        if head.startswith(b"GET /count"):
            body = str(count).encode()
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif head.startswith(b"POST /dicom-web/studies"):
            # a STOW-RS sink: every instance taken (PS3.18 10.5.3: 200)
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
        else:
            count += 1
            self.t.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

async def main():
    server = await asyncio.get_running_loop().create_server(Hook, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


class Receiver:
    """A receiver in a process of its own, as cheap as an HTTP server can be (so that
    the figures are the archive's, not the receiver's): 204 to every POST, and its
    count at GET /count."""

    def __init__(self, nice: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True
        )
        psutil.Process(self.proc.pid).nice(nice)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}/hook"
        self._count = f"http://127.0.0.1:{port}/count"

    @property
    def count(self) -> int:
        return int(httpx.get(self._count).text)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def store(port: int, count: int, clients: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for _ in range(count // 10):
        study, series = new_uids()
        queue.put_nowait(multipart_body(ct_slice(study, series, i) for i in range(10)))

    async def client() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            while not queue.empty():
                status, _ = await conn.post("/dicom-web/studies", queue.get_nowait(), MULTIPART)
                assert status == 200, status
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return count / (time.perf_counter() - started)


def _cpu_seconds(process: PictorProcess, receivers: list[Receiver]) -> dict[str, float]:
    """CPU seconds (user + system) so far of the HTTP processes, the background process,
    PostgreSQL (the postmaster and its sessions) and the benchmark's receivers."""
    groups: dict[str, list[psutil.Process]] = {"http": [], "background": [], "postgres": []}
    assert process.proc is not None
    supervisor = psutil.Process(process.proc.pid)
    groups["http"].append(supervisor)
    for child in supervisor.children(recursive=True):
        try:
            background = "app.background" in child.cmdline()
        except psutil.NoSuchProcess:
            continue
        groups["background" if background else "http"].append(child)
    if (pid := postmaster_pid(process.data_dir)) is not None:
        postmaster = psutil.Process(pid)
        groups["postgres"] += [postmaster, *postmaster.children()]
    groups["receivers"] = [psutil.Process(r.proc.pid) for r in receivers]
    seconds: dict[str, float] = {}
    for name, members in groups.items():
        total = 0.0
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        seconds[name] = total
    return seconds


def _busy(before: Any, after: Any) -> float:
    """The fraction of the machine's CPU time between two samples that was not idle
    (nor waiting for the disk)."""
    spent = {f: getattr(after, f) - getattr(before, f) for f in after._fields}
    total = sum(spent.values()) - spent.get("guest", 0) - spent.get("guest_nice", 0)
    idle = spent["idle"] + spent.get("iowait", 0)
    return (total - idle) / total if total > 0 else 0.0


def _sent(routes: str) -> int:
    found = [r for r in httpx.get(routes, timeout=30).json() if r["name"] == "bench"]
    return int(found[0]["sent"]) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL server to use (default: the embedded one)"
    )
    parser.add_argument(
        "--receivers-nice",
        type=int,
        default=19,
        help="niceness of the receivers and the sink (default 19: they stand for other "
        "machines, so they get only the CPU the archive leaves; 0: they compete with it)",
    )
    args = parser.parse_args()
    receivers = [Receiver(args.receivers_nice), Receiver(args.receivers_nice)]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1024)
    rates: dict[str, list[float]] = {"none": [], "two": [], "dead": [], "routed": []}
    drains: dict[str, list[float]] = {k: [] for k in rates}
    #: CPU milliseconds per instance stored, per phase and group of processes
    cpu: dict[str, dict[str, list[float]]] = {k: {} for k in rates}
    #: KiB written to the disks per instance stored; the machine's busy fraction
    disk: dict[str, list[float]] = {k: [] for k in rates}
    busy: dict[str, list[float]] = {k: [] for k in rates}
    sink = f"dicomweb:{receivers[1].url.rsplit('/', 1)[0]}/dicom-web"
    with tempfile.TemporaryDirectory(prefix="pictor-events-bench-") as tmp:
        env = {"PICTOR_SCRUB_RATE": "0"}
        if args.database_url:
            env["DATABASE_URL"] = args.database_url
        process = PictorProcess(Path(tmp) / "data", env=env).start()
        admin = process.base + "/admin/webhooks"
        try:
            uvloop.run(store(process.port, 100, args.clients))  # warm up
            hooks: list[int] = []
            routes = process.base + "/admin/routes"
            for _ in range(args.rounds):
                for phase in ("none", "two", "dead", "routed"):
                    for hook in hooks:
                        gone = httpx.delete(f"{admin}/{hook}", timeout=60)
                        assert gone.status_code == 204, gone.text
                    hooks = []
                    httpx.delete(f"{routes}/bench")
                    if phase == "routed":  # every instance forwarded as it is stored
                        made = httpx.post(
                            routes, json={"name": "bench", "to": sink, "on": "instance.created"}
                        )
                        assert made.status_code == 201, made.text
                    targets = {
                        "none": [],
                        "two": [r.url for r in receivers],
                        "routed": [r.url for r in receivers],
                    }.get(  # fmt: skip
                        phase,
                        [r.url for r in receivers]
                        + [f"http://127.0.0.1:{silent.getsockname()[1]}/x"],
                    )
                    for url in targets:
                        made = httpx.post(admin, json={"url": url, "events": EVENTS})
                        assert made.status_code == 201, made.text
                        hooks.append(made.json()["id"])
                    before = receivers[0].count
                    cpu_before = _cpu_seconds(process, receivers)
                    disk_before = psutil.disk_io_counters()
                    machine_before = psutil.cpu_times()
                    rates[phase].append(
                        uvloop.run(store(process.port, args.instances, args.clients))
                    )
                    # every event of the phase delivered, every instance forwarded,
                    # before the next: no work is left to a later phase (or dropped)
                    started = time.perf_counter()
                    while time.perf_counter() - started < 120 and (
                        (phase != "none" and receivers[0].count < before + args.instances)
                        or (phase == "routed" and _sent(routes) < args.instances)
                    ):
                        time.sleep(0.02)
                    drains[phase].append(time.perf_counter() - started)
                    cpu_after = _cpu_seconds(process, receivers)
                    disk_after = psutil.disk_io_counters()
                    machine_after = psutil.cpu_times()
                    disk[phase].append(
                        (disk_after.write_bytes - disk_before.write_bytes) / 1024 / args.instances
                    )
                    busy[phase].append(_busy(machine_before, machine_after))
                    for group, seconds in cpu_after.items():
                        used = 1000 * (seconds - cpu_before.get(group, 0.0)) / args.instances
                        cpu[phase].setdefault(group, []).append(used)
            median = {k: statistics.median(v) for k, v in rates.items()}
            print(
                json.dumps(
                    {
                        "receivers_nice": args.receivers_nice,
                        "instances_per_s": {k: round(v, 1) for k, v in median.items()},
                        "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                        "ratio_two_webhooks": round(median["two"] / median["none"], 3),
                        "ratio_with_dead_receiver": round(median["dead"] / median["none"], 3),
                        "ratio_two_webhooks_one_route": round(median["routed"] / median["none"], 3),
                        "seconds_to_deliver_after_each_phase": {
                            k: round(max(v), 2) for k, v in drains.items() if k != "none"
                        },
                        "delivered_to_first_receiver": receivers[0].count,
                        "disk_kib_written_per_instance": {
                            k: round(statistics.median(v), 1) for k, v in disk.items()
                        },
                        "machine_busy_fraction": {
                            k: round(statistics.median(v), 2) for k, v in busy.items()
                        },
                        "cpu_ms_per_instance": {
                            phase: {g: round(statistics.median(v), 2) for g, v in groups.items()}
                            for phase, groups in cpu.items()
                        },
                    },
                    indent=1,
                )
            )
        finally:
            process.stop()
            silent.close()
            for r in receivers:
                r.stop()


if __name__ == "__main__":
    main()
