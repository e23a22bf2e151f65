"""The worklist (issue #18, UPS-RS): what a reading workflow costs, on one fresh server.

Usage: python benchmarks/ups.py [--workitems 2000] [--clients 8] [--cycles 300]

Measured, in one run: workitems created per second (``--clients`` concurrent clients,
each POST checked 201); a search of the open worklist (``limit=100``, HIGH first),
median and p95 latency of 200 searches, every answer checked to hold 100 workitems
ordered by priority; a performer's whole cycle (claim, update with the performed
procedure, complete: three requests) per second with ``--clients`` performers; and the
latency of notification, from the state change's answer to the event report's arrival
on a subscriber's WebSocket (global subscription), median and p95 over the cycles.
The issue sets no target: the figures are absolute. A channel is woken by the NOTIFY of
the commit that queues the report, so the report may reach the subscriber before the
performer has read its answer (a negative delay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

import _client  # noqa: F401 - puts the repository and tests/ on sys.path
from server import PictorProcess

DICOM_JSON = {"Content-Type": "application/dicom+json"}
PRIORITIES = ("LOW", "MEDIUM", "HIGH")


def workitem(i: int) -> dict[str, Any]:
    return {
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": [PRIORITIES[i % 3]]},
        "00741204": {"vr": "LO", "Value": [f"Read study {i}"]},
        "00404005": {"vr": "DT", "Value": [f"202612031{i % 10}0000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"DOE^PATIENT{i}"}]},
        "00100020": {"vr": "LO", "Value": [f"P{i}"]},
        "0020000D": {"vr": "UI", "Value": [f"1.2.826.0.1.3680043.10.77.{i}"]},
    }


def uid(i: int) -> str:
    return f"1.2.826.0.1.3680043.10.78.{i}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def create_all(base: str, n: int, clients: int) -> float:
    queue = list(range(n))

    async def worker(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            r = await http.post(
                f"/workitems?{uid(i)}", content=json.dumps(workitem(i)), headers=DICOM_JSON
            )
            assert r.status_code == 201, r.text

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        await asyncio.gather(*(worker(http) for _ in range(clients)))
    return n / (time.perf_counter() - start)


async def searches(base: str, path: str, params: dict[str, str], check: Any) -> list[float]:
    """200 searches one after the other, each answer checked; their latencies."""
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for _ in range(200):
            start = time.perf_counter()
            r = await http.get(path, params=params)
            times.append(time.perf_counter() - start)
            check(r)
    return times


def check_worklist(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == 100
    ranks = [PRIORITIES[::-1].index(w["00741200"]["Value"][0]) for w in items]
    assert ranks == sorted(ranks)  # HIGH first


async def cycles(base: str, ws_base: str, n: int, clients: int) -> tuple[float, list[float]]:
    """``n`` claim-update-complete cycles; notification latencies of the completions."""
    answered: dict[str, float] = {}
    arrived: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        r = await http.post("/workitems/1.2.840.10008.5.1.4.34.5/subscribers/BENCH")
        assert r.status_code == 201, r.text
    async with connect(f"{ws_base}/subscribers/BENCH", max_size=None) as ws:

        async def listen() -> None:
            async for message in ws:
                report = json.loads(message)
                if report.get("00741000", {}).get("Value") == ["COMPLETED"]:
                    arrived[report["00001000"]["Value"][0]] = time.perf_counter()

        listener = asyncio.get_running_loop().create_task(listen())
        queue = list(range(n))

        async def performer(http: httpx.AsyncClient, me: int) -> None:
            transaction = f"1.2.826.0.1.3680043.10.79.{me}"
            performed = {
                "00741216": {
                    "vr": "SQ",
                    "Value": [
                        {
                            "00404050": {"vr": "DT", "Value": ["20261203100000"]},
                            "00404051": {"vr": "DT", "Value": ["20261203101000"]},
                        }
                    ],
                }
            }
            while queue:
                w = uid(queue.pop())
                for to in ("IN PROGRESS", "COMPLETED"):
                    if to == "COMPLETED":
                        r = await http.post(
                            f"/workitems/{w}?transaction={transaction}",
                            content=json.dumps(performed),
                            headers=DICOM_JSON,
                        )
                        assert r.status_code == 200, r.text
                    body = {
                        "00741000": {"vr": "CS", "Value": [to]},
                        "00081195": {"vr": "UI", "Value": [transaction]},
                    }
                    r = await http.put(
                        f"/workitems/{w}/state", content=json.dumps(body), headers=DICOM_JSON
                    )
                    assert r.status_code == 200, r.text
                answered[w] = time.perf_counter()

        start = time.perf_counter()
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await asyncio.gather(*(performer(http, c) for c in range(clients)))
        rate = n / (time.perf_counter() - start)
        deadline = time.monotonic() + 30
        while len(arrived) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        listener.cancel()
    assert len(arrived) == n, f"{len(arrived)} of {n} completions reported"
    return rate, [arrived[w] - answered[w] for w in answered]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workitems", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process = PictorProcess(Path(tmp) / "data", env={"PICTOR_SCRUB_RATE": "0"}).start()
        try:
            base = process.dicomweb
            created = await create_all(base, args.workitems, args.clients)
            worklist = await searches(
                base,
                "/workitems",
                {"ProcedureStepState": "SCHEDULED", "limit": "100"},
                check_worklist,
            )
            rate, latency = await cycles(
                base,
                base.replace("http://", "ws://"),
                min(args.cycles, args.workitems),
                args.clients,
            )
        finally:
            process.stop()
    ms = 1000
    print(f"create: {created:.0f} workitems/s ({args.clients} clients)")
    print(
        f"worklist search (limit 100 of {args.workitems}): p50 {statistics.median(worklist) * ms:.1f} ms,"
        f" p95 {pct(worklist, 0.95) * ms:.1f} ms"
    )
    print(f"claim + update + complete: {rate:.0f} cycles/s ({args.clients} performers)")
    print(
        "event report arrival minus the state change's answer arrival (negative: before):"
        f" p50 {statistics.median(latency) * ms:.0f} ms,"
        f" p95 {pct(latency, 0.95) * ms:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
