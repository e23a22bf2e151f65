"""Pictor vs Orthanc: the same DICOMweb workload against both, side by side, in one run.

    python benchmarks/compare.py                    # default preset, a few minutes
    python benchmarks/compare.py --preset large     # 30,000 small instances more
    python benchmarks/compare.py --preset tiny      # a smoke run (under a minute)
    options: --rounds N (load rows N times, median)  --json PATH  --seconds S
             --clients N  --servers pictor,orthanc  --rows REGEX  --retries N
             --netns auto|on|off  --orthanc-option KEY=JSON  --keep

1. A deterministic synthetic corpus (``_corpus.py``): CT series of 512 x 512 16-bit
   slices, the same kind of series as JPEG 2000 lossless, multi-frame instances (one
   JPEG 2000), single MR, CR and US frames at their native sizes, and many small
   instances in many studies of varied patients, dates, modalities and accession numbers.
2. Both servers fresh, on loopback: Orthanc (Debian's ``orthanc``, with the DICOMweb
   and GDCM plugins, its own JSON configuration and storage folder under a temporary
   directory; remote access off, its DICOM port on loopback for the C-STORE row) and
   ``pictor serve`` (new data directory, embedded PostgreSQL, DIMSE on loopback). As
   root, the whole run (servers and
   client) moves into a private network namespace that has only loopback
   (``--netns auto``, the default).
3. The same client (``_client.Connection``: lean keep-alive HTTP/1.1, a timeout on
   every request) runs each row against one server, then the other:
   STOW ingest per group (instances/s, MB/s), C-STORE of the native CT group under new
   UIDs by dcmtk ``storescu`` (one association per client, each instance found by
   QIDO-RS afterwards), the QIDO mix (OHIF's includefield),
   series metadata, single frames as stored (``transfer-syntax=*``) and transcoded to
   Explicit VR Little Endian, for native and JPEG 2000 instances, and rendered JPEG (CT
   native and JPEG 2000, MR, CR, US).
   Every answer is checked (status, result count and identity, frame bytes, JPEG
   magic): a fast wrong answer marks the row WRONG for that server, not fast.
4. A server that dies (process exit, connection refused) or stops answering (the
   timeout) is reported in the row as DIED / FAILED, restarted on its storage, and the
   run goes on.
5. The table: per row both figures and the ratio Pictor / Orthanc of the throughput
   (higher is better: > 1 means Pictor is faster), client-side p50 latency (lower is
   better) and server CPU per request; then each server's peak RSS and CPU seconds
   (psutil, whole process tree: Pictor's workers and its PostgreSQL included).
   Also written as JSON (``--json``, default ``benchmarks/results/compare.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _corpus
import msgspec
import psutil
import uvloop
from _corpus import Corpus, ImageRec, Spec, StudyRec

from _client import MULTIPART, Connection, multipart_body
from server import PictorProcess, free_port, postmaster_pid, stop_postgres

ORTHANC_BIN = "Orthanc"
STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE = 'multipart/related; type="application/octet-stream"'
DICOM_JSON = "application/dicom+json"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OHIF_STUDY_FIELDS = "limit=101&offset=0&includefield=00081030%2C00080060%2C00080090%2C00100030"
SERIES_FIELDS = "includefield=00080021%2C00080031%2C0008103E"
INSTANCE_FIELDS = "includefield=00280010%2C00280011%2C00200013"


@dataclass(frozen=True)
class Preset:
    spec: Spec
    seconds: float  # measured time per load row and server
    warmup: float
    clients: int
    batch: int  # instances per STOW request (single-frame groups)


PRESETS = {
    "tiny": Preset(
        Spec(
            ct_studies=1,
            ct_slices=12,
            j2k_studies=1,
            j2k_slices=8,
            mf_instances=1,
            mf_frames=8,
            mf_j2k_frames=4,
            mr_instances=4,
            cr_instances=2,
            us_instances=4,
            small_instances=300,
        ),
        seconds=1.5,
        warmup=0.5,
        clients=4,
        batch=10,
    ),
    "small": Preset(Spec(), seconds=6, warmup=1.5, clients=4, batch=10),
    "large": Preset(Spec(small_instances=30_000), seconds=6, warmup=1.5, clients=4, batch=10),
}


# --------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------


class Server:
    name = ""
    port = 0
    root = "/dicom-web"
    dimse_port = 0  # the C-STORE row's door (PS3.8 on loopback)
    dimse_aet = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def exit_code(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        raise NotImplementedError

    def roots(self) -> list[int]:
        """Pids whose process trees are this server."""
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""

    def processes(self) -> list[psutil.Process]:
        procs = []
        for pid in self.roots():
            try:
                p = psutil.Process(pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return procs

    cpu_carry = 0.0  # CPU of processes of this server that died (before a restart)
    _cpu_last = 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU of the tree so far, including children it has reaped and,
        after a restart, what the dead processes had used."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        self._cpu_last = max(self._cpu_last, total)
        return self.cpu_carry + total

    def restart(self) -> None:
        self.cpu_carry += self._cpu_last
        self._cpu_last = 0.0
        self.start()

    def memory(self) -> tuple[int, int]:
        """(sum of RSS, sum of PSS) over the tree; PSS shares shared pages out, so that
        PostgreSQL's shared buffers count once."""
        rss, pss, _ = self.memory_by_kind()
        return rss, pss

    def memory_by_kind(self) -> tuple[int, int, dict[str, int]]:
        """As :meth:`memory`, with the PSS of each kind of process (:meth:`kind`)."""
        rss = pss = 0
        kinds: dict[str, int] = {}
        roots = set(self.roots())
        for p in self.processes():
            try:
                info = p.memory_full_info()
                kind = self.kind(p, roots)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += info.pss
            kinds[kind] = kinds.get(kind, 0) + info.pss
        return rss, pss, kinds

    def kind(self, p: psutil.Process, roots: set[int]) -> str:
        """What a process of the tree is, for the peak memory's breakdown."""
        return p.name()

    def death(self) -> str | None:
        code = self.exit_code()
        if code is None:
            return None
        if code < 0:
            return f"process killed by {signal.Signals(-code).name}"
        return f"process exited with code {code}"


def orthanc_plugins() -> dict[str, str]:
    """Paths of the DICOMweb and GDCM plugins, from the Debian packages' file lists."""
    found: dict[str, str] = {}
    for package, key, pattern in (
        ("orthanc-dicomweb", "dicomweb", r"/libOrthancDicomWeb\.so$"),
        ("orthanc-gdcm", "gdcm", r"/libOrthancGdcm\.so$"),
    ):
        try:
            listing = subprocess.run(
                ["dpkg", "-L", package], capture_output=True, text=True, check=True
            ).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            listing = []
        paths = [p for p in listing if re.search(pattern, p) and Path(p).exists()]
        if not paths:
            raise SystemExit(
                f"{package} is not installed: apt-get install -y --no-install-recommends "
                "orthanc orthanc-dicomweb orthanc-gdcm"
            )
        found[key] = paths[0]
    return found


class OrthancServer(Server):
    name = "orthanc"

    def __init__(self, workdir: Path, options: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.dimse_port, self.dimse_aet = free_port(), "ORTHANC"
        self.proc: subprocess.Popen[bytes] | None = None
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        plugins = orthanc_plugins()
        self.config = {
            "Name": "pictor-bench-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [plugins["dicomweb"], plugins["gdcm"]],
            "HttpPort": self.port,
            # isolation: no remote HTTP clients, DICOM only for the C-STORE row's
            # storescu (any calling AE title may store: DicomAlwaysAllowStore)
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.dimse_aet,
            "DicomPort": self.dimse_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "WebDavEnabled": False,
            "OrthancExplorerEnabled": False,
            "HttpProxy": "",
            "OrthancPeers": {},
            "DicomModalities": {},
            "SaveJobs": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "Gdcm": {"Enable": True},
            **options,
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = workdir / "orthanc.log"

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [ORTHANC_BIN, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/system", timeout=2) as r:
                    if r.status == 200:
                        self.version = json.loads(r.read()).get("Version", "?")
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not become ready: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


class PictorServer(Server):
    name = "pictor"

    def __init__(self, workdir: Path, workers: int) -> None:
        self.data_dir = workdir / "data"
        self.dimse_port, self.dimse_aet = free_port(), "PICTOR"
        self.process = PictorProcess(
            self.data_dir, workers=workers, env={"PICTOR_DIMSE_PORT": str(self.dimse_port)}
        )
        self.port = self.process.port
        self.last_code: int | None = None

    def start(self) -> None:
        self.last_code = None
        self.process.start()

    def stop(self) -> None:
        self.process.stop()
        stop_postgres(self.data_dir)

    def exit_code(self) -> int | None:
        proc = self.process.proc
        if proc is None:
            return self.last_code
        code = proc.poll()
        if code is not None:
            self.last_code = code
            self.process.proc = None
            stop_postgres(self.data_dir)  # start() again must not find it running
        return code

    def roots(self) -> list[int]:
        pids = [self.process.proc.pid] if self.process.proc is not None else []
        pg = postmaster_pid(self.data_dir)
        return pids + ([pg] if pg else [])

    def kind(self, p: psutil.Process, roots: set[int]) -> str:
        """PostgreSQL, the supervising process, a server process (HTTP), a codec worker
        (a server process's child), or a ``python -m`` helper (DIMSE, background)."""
        if p.name().startswith("postgres"):
            return "postgresql"
        if p.pid in roots:
            return "supervisor"
        command = " ".join(p.cmdline())
        helper = re.search(r" -m (app\.\w+)", command)
        if helper:
            return helper.group(1)
        if "resource_tracker" in command:
            return "resource tracker"
        return "server process" if p.ppid() in roots else "codec worker"

    def log_tail(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def settle(server: Server, idle: float = 0.05, limit: float = 60.0) -> float:
    """Wait until the server's tree uses under ``idle`` of a core over a second (start-up
    work done: imports, worker pools); returns the seconds waited."""
    t0 = time.monotonic()
    before = server.cpu_seconds()
    while time.monotonic() - t0 < limit:
        time.sleep(1.0)
        now = server.cpu_seconds()
        if now - before < idle:
            break
        before = now
    return time.monotonic() - t0


def reap(tree: list[psutil.Process], grace: float = 3.0) -> list[str]:
    """Kill what of a stopped server's process tree is still running after ``grace``
    seconds (these processes are this run's own); returns their command lines."""
    _, alive = psutil.wait_procs(tree, timeout=grace)
    left = []
    for p in alive:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            left.append(f"{p.pid}: {' '.join(p.cmdline())[:100]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return left


class Monitor(threading.Thread):
    """Samples each server's tree memory for the peaks, and its CPU (so that a crash
    loses at most one interval of it)."""

    def __init__(self, servers: list[Server], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.servers, self.interval = servers, interval
        self.peak_rss: dict[str, int] = {s.name: 0 for s in servers}
        self.peak_pss: dict[str, int] = {s.name: 0 for s in servers}
        #: at the PSS peak: PSS per kind of process (:meth:`Server.kind`)
        self.peak_kinds: dict[str, dict[str, int]] = {s.name: {} for s in servers}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            for s in self.servers:
                try:
                    rss, pss, kinds = s.memory_by_kind()
                    self.peak_rss[s.name] = max(self.peak_rss[s.name], rss)
                    if pss > self.peak_pss[s.name]:
                        self.peak_pss[s.name] = pss
                        self.peak_kinds[s.name] = kinds
                    s.cpu_seconds()
                except Exception:  # noqa: BLE001 - a process vanishing between calls
                    pass


# --------------------------------------------------------------------------------------
# Checks: a fast wrong answer must not count
# --------------------------------------------------------------------------------------


class Wrong(Exception):
    """The server answered, but not what the request asked for."""


def parts(headers: dict[str, str], body: bytes) -> list[bytes]:
    """Payloads of a multipart/related answer."""
    ctype = headers.get("content-type", "")
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not ctype.lower().startswith("multipart/related") or not m:
        raise Wrong(f"not multipart/related: {ctype!r}")
    delimiter = b"\r\n--" + m.group(1).encode()
    sections = (b"\r\n" + body).split(delimiter)[1:-1]
    out = []
    for s in sections:
        head, sep, payload = s.partition(b"\r\n\r\n")
        if not sep:
            raise Wrong("a multipart part without headers")
        out.append(payload)
    return out


def ok_status(status: int, body: bytes) -> None:
    if status != 200:
        raise Wrong(f"HTTP {status}: {body[:160]!r}")


def json_list(status: int, body: bytes) -> list[dict[str, Any]]:
    if status == 204:
        return []
    ok_status(status, body)
    items = msgspec.json.decode(body)
    if not isinstance(items, list):
        raise Wrong("not a JSON array")
    return items


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    v = values[0]
    return v.get("Alphabetic") if isinstance(v, dict) else v


Check = Callable[[int, dict[str, str], bytes], int]


def check_uids(tag: str, expected: set[str], count: int) -> Check:
    """A JSON array of ``count`` distinct results, each ``tag`` one of ``expected``."""

    def check(status: int, headers: dict[str, str], body: bytes) -> int:
        items = json_list(status, body)
        got = [value(i, tag) for i in items]
        if len(got) != count:
            raise Wrong(f"{len(got)} results, expected {count}")
        if len(set(got)) != count or not expected.issuperset(got):
            raise Wrong("results that do not match the query")
        return len(body)

    return check


def check_frame(expected: bytes, transfer_syntax: str | None) -> Check:
    def check(status: int, headers: dict[str, str], body: bytes) -> int:
        ok_status(status, body)
        (payload,) = parts(headers, body)
        if transfer_syntax and transfer_syntax not in headers.get("content-type", ""):
            # the part's own header carries it too, but one of the two must
            head = body[: body.find(b"\r\n\r\n", body.find(b"--", 0) + 2)]
            if transfer_syntax.encode() not in head:
                raise Wrong(f"transfer syntax is not {transfer_syntax}")
        if payload != expected:
            raise Wrong(f"frame of {len(payload)} bytes differs from the {len(expected)} expected")
        return len(payload)

    return check


def check_jpeg(rows: int, cols: int, strict: bool) -> Check:
    def check(status: int, headers: dict[str, str], body: bytes) -> int:
        ok_status(status, body)
        if body[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in body[-16:]:
            raise Wrong(f"not a JPEG: {body[:8]!r}")
        if strict:
            from PIL import Image

            with Image.open(io.BytesIO(body)) as im:
                if im.size != (cols, rows):
                    raise Wrong(f"rendered {im.size}, expected {(cols, rows)}")
        return len(body)

    return check


# --------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str = "ok"  # ok | WRONG: ... | FAILED: ... | DIED: ... | not run: ...
    count: int = 0  # requests (load rows) or instances (ingest rows)
    bytes: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def summary(self, unit: str) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {"status": self.status}
        if self.status == "ok" and self.seconds > 0:
            out[unit] = round(self.count / self.seconds, 1)
            out["mb_per_s"] = round(self.bytes / self.seconds / 1e6, 1)
            out["count"] = self.count
            out["seconds"] = round(self.seconds, 2)
            if lat:
                out["p50_ms"] = round(lat[len(lat) // 2] * 1000, 2)
                out["p95_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000, 2)
            out["server_cpu_s"] = round(self.cpu_s, 2)
            out["server_cpu_ms_per_unit"] = round(self.cpu_s / max(1, self.count) * 1000, 3)
        return out


def failure(server: Server, exc: BaseException) -> str:
    time.sleep(0.3)  # let a crashing process finish dying
    died = server.death()
    if died:
        return f"DIED: {died}"
    if isinstance(exc, Wrong):
        return f"WRONG: {exc}"
    if isinstance(exc, TimeoutError):
        return "FAILED: no answer within the timeout"
    return f"FAILED: {type(exc).__name__}: {exc}"[:200]


Request = tuple[str, str, Check]  # path, Accept, check


async def drive(
    server: Server,
    requests: list[Request],
    clients: int,
    seconds: float,
    warmup: float,
    timeout: float,
) -> Outcome:
    """GET the requests round robin with ``clients`` keep-alive connections: ``warmup``
    seconds unmeasured, then ``seconds`` measured. The first error ends the row."""
    out = Outcome()
    errors: list[BaseException] = []
    t0 = time.perf_counter()
    measure_from = t0 + warmup
    stop = measure_from + seconds
    cpu0: list[float] = []

    async def client(k: int) -> None:
        conn = Connection("127.0.0.1", server.port, timeout=timeout)
        i = k
        try:
            while not errors:
                now = time.perf_counter()
                if now >= stop:
                    break
                path, accept, check = requests[i % len(requests)]
                i += clients
                status, headers, body = await conn.get(server.root + path, accept)
                size = check(status, headers, body)
                done = time.perf_counter()
                if now >= measure_from:
                    out.count += 1
                    out.bytes += size
                    out.latencies.append(done - now)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            errors.append(exc)
        finally:
            await conn.close()

    async def cpu_mark() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu0.append(server.cpu_seconds())

    await asyncio.gather(cpu_mark(), *(client(k) for k in range(clients)))
    if errors:
        out.status = failure(server, errors[0])
        return out
    out.seconds = time.perf_counter() - measure_from
    out.cpu_s = server.cpu_seconds() - cpu0[0]
    return out


async def ingest(
    server: Server,
    bodies: list[tuple[bytes, str, int]],
    clients: int,
    timeout: float,
) -> Outcome:
    """POST every body (body, content type, instances in it) to /studies."""
    out = Outcome()
    queue = list(reversed(bodies))
    errors: list[BaseException] = []

    async def client() -> None:
        conn = Connection("127.0.0.1", server.port, timeout=timeout)
        try:
            while queue and not errors:
                body, ctype, n = queue.pop()
                t = time.perf_counter()
                status, answer = await conn.post(server.root + "/studies", body, ctype)
                out.latencies.append(time.perf_counter() - t)
                ok_status(status, answer)
                reply = msgspec.json.decode(answer)
                stored = len((reply.get("00081199") or {}).get("Value") or [])
                failed = len((reply.get("00081198") or {}).get("Value") or [])
                if stored != n or failed:
                    raise Wrong(f"stored {stored} of {n} instances ({failed} failed)")
                out.count += n
                out.bytes += len(body)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            errors.append(exc)
        finally:
            await conn.close()

    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    out.seconds = time.perf_counter() - t0
    out.cpu_s = server.cpu_seconds() - cpu0
    if errors:
        out.status = failure(server, errors[0])
    return out


# --------------------------------------------------------------------------------------
# The workload: rows drawn from the corpus
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str  # "instances/s" (ingest) or "requests/s"
    group: str = ""  # ingest rows: the corpus group
    door: str = "stow"  # ingest rows: "stow" (HTTP) or "c-store" (DIMSE, storescu)
    requests: list[Request] = field(default_factory=list)


def study_path(st: StudyRec) -> str:
    return f"/studies/{st.uid}"


def qido_rows(corpus: Corpus, rng: random.Random, n: int) -> list[Row]:
    studies = corpus.studies
    by_pid: dict[str, list[StudyRec]] = {}
    for st in studies:
        by_pid.setdefault(st.patient_id, []).append(st)

    def capped(matches: list[StudyRec]) -> tuple[set[str], int]:
        return {s.uid for s in matches}, min(len(matches), 101)

    rows = []
    reqs: list[Request] = []
    for pid in rng.sample(sorted(by_pid), min(n, len(by_pid))):
        uids, count = capped(by_pid[pid])
        path = f"/studies?PatientID={quote(pid)}&{OHIF_STUDY_FIELDS}"
        reqs.append((path, DICOM_JSON, check_uids("0020000D", uids, count)))
    rows.append(Row("qido_patient_id", "QIDO studies, PatientID", "requests/s", requests=reqs))

    # PatientName prefix wildcards whose matches are the same compared exactly and
    # compared without case and accents (servers differ there; the query must not)
    prefixes = sorted({_corpus.fold(s.patient_name)[:3] for s in studies})
    reqs = []
    for prefix in rng.sample(prefixes, len(prefixes)):
        exact = [s for s in studies if s.patient_name.startswith(prefix)]
        lenient = [s for s in studies if _corpus.fold(s.patient_name).startswith(prefix)]
        if not exact or len(exact) != len(lenient) or not prefix.isalpha():
            continue
        uids, count = capped(exact)
        path = f"/studies?PatientName={quote(prefix)}*&{OHIF_STUDY_FIELDS}"
        reqs.append((path, DICOM_JSON, check_uids("0020000D", uids, count)))
        if len(reqs) == n:
            break
    rows.append(
        Row("qido_patient_name", "QIDO studies, PatientName=ABC*", "requests/s", requests=reqs)
    )

    reqs = []
    for _ in range(n):
        year = rng.randrange(2015, 2025)
        month = rng.randrange(1, 10)
        first, last = f"{year}{month:02d}01", f"{year}{month + 3:02d}28"
        modality = rng.choice(["CT", "MR", "CR", "DX"])
        matches = [s for s in studies if first <= s.date <= last and modality in s.modalities]
        if not matches:
            continue
        uids, count = capped(matches)
        path = f"/studies?StudyDate={first}-{last}&ModalitiesInStudy={modality}&{OHIF_STUDY_FIELDS}"
        reqs.append((path, DICOM_JSON, check_uids("0020000D", uids, count)))
    rows.append(
        Row(
            "qido_date_modality",
            "QIDO studies, StudyDate range + ModalitiesInStudy",
            "requests/s",
            requests=reqs,
        )
    )

    sample = rng.sample(studies, min(n, len(studies)))
    reqs = []
    for st in sample:
        uids = {se.uid for se in st.series}
        path = f"{study_path(st)}/series?{SERIES_FIELDS}"
        reqs.append((path, DICOM_JSON, check_uids("0020000E", uids, len(uids))))
    rows.append(Row("qido_series", "QIDO series of a study", "requests/s", requests=reqs))

    reqs = []
    for st in sample:
        se = st.series[0]
        uids = set(se.instances)
        path = f"{study_path(st)}/series/{se.uid}/instances?{INSTANCE_FIELDS}"
        reqs.append((path, DICOM_JSON, check_uids("00080018", uids, len(uids))))
    rows.append(Row("qido_instances", "QIDO instances of a series", "requests/s", requests=reqs))
    return rows


def image_path(rec: ImageRec) -> str:
    return f"/studies/{rec.study}/series/{rec.series}/instances/{rec.sop}"


def wado_rows(corpus: Corpus, rng: random.Random) -> list[Row]:
    ct, j2k, mf = corpus.images["ct"], corpus.images["j2k"], corpus.images["mf"]
    rows = []
    series: dict[str, list[ImageRec]] = {}
    for rec in ct:
        series.setdefault(rec.series, []).append(rec)
    reqs: list[Request] = []
    for uid, recs in series.items():
        path = f"/studies/{recs[0].study}/series/{uid}/metadata"
        reqs.append((path, DICOM_JSON, check_uids("00080018", {r.sop for r in recs}, len(recs))))
    size = len(ct) // max(1, corpus.spec.ct_studies)
    rows.append(Row("metadata", f"series metadata ({size} instances)", "requests/s", requests=reqs))

    def frames(recs: list[ImageRec], accept: str, as_stored: bool) -> list[Request]:
        out: list[Request] = []
        for rec in recs:
            for _ in range(1 if len(rec.native_frames) == 1 else 12):
                k = rng.randrange(len(rec.native_frames))
                expected = rec.stored_frames[k] if as_stored else rec.native_frames[k]
                ts = rec.transfer_syntax if as_stored else EXPLICIT_LE
                path = f"{image_path(rec)}/frames/{k + 1}"
                out.append((path, accept, check_frame(expected, ts if as_stored else None)))
        rng.shuffle(out)
        return out

    native_mf = [r for r in mf if r.transfer_syntax == EXPLICIT_LE]
    j2k_mf = [r for r in mf if r.transfer_syntax != EXPLICIT_LE]
    for key, label, recs, accept, as_stored in (
        ("frame_native_star", "frame, native CT, transfer-syntax=*", ct, STAR, True),
        ("frame_native_native", "frame, native CT, as native", ct, NATIVE, False),
        ("frame_j2k_star", "frame, JPEG 2000 CT, transfer-syntax=*", j2k, STAR, True),
        ("frame_j2k_native", "frame, JPEG 2000 CT -> native", j2k, NATIVE, False),
        ("frame_mf_star", "frame of a multi-frame, transfer-syntax=*", native_mf, STAR, True),
        (
            "frame_mf_j2k_native",
            "frame of a JPEG 2000 multi-frame -> native",
            j2k_mf,
            NATIVE,
            False,
        ),
    ):
        if recs:
            rows.append(Row(key, label, "requests/s", requests=frames(recs, accept, as_stored)))
    views = corpus.images.get("views", [])
    for key, label, recs in (
        ("rendered_native", "rendered JPEG, native CT", ct),
        ("rendered_j2k", "rendered JPEG, JPEG 2000 CT", j2k),
        ("rendered_mr", "rendered JPEG, MR 256x256", [r for r in views if r.kind == "MR"]),
        ("rendered_cr", "rendered JPEG, CR 2140x1760", [r for r in views if r.kind == "CR"]),
        ("rendered_us", "rendered JPEG, US 640x480 RGB", [r for r in views if r.kind == "US"]),
    ):
        if not recs:
            continue
        reqs = [
            (f"{image_path(r)}/rendered", "image/jpeg", check_jpeg(r.rows, r.cols, i < 3))
            for i, r in enumerate(recs)
        ]
        rows.append(Row(key, label, "requests/s", requests=reqs))
    return rows


def ingest_rows(corpus: Corpus) -> list[Row]:
    spec = corpus.spec
    return [
        Row("stow_ct", "STOW CT 512x512 native", "instances/s", group="ct"),
        Row("stow_j2k", "STOW CT 512x512 JPEG 2000", "instances/s", group="j2k"),
        Row(
            "stow_mf",
            f"STOW multi-frame 512x512 ({spec.mf_frames} frames)",
            "instances/s",
            group="mf",
        ),
        Row(
            "stow_small",
            f"STOW {spec.small_instances:,} small {spec.small_size}x{spec.small_size}",
            "instances/s",
            group="small",
        ),
        Row("stow_views", "STOW MR, CR and US single frames", "instances/s", group="views"),
        Row(
            "cstore_ct",
            "C-STORE CT 512x512 native (storescu, 1 per client)",
            "instances/s",
            group="ct",
            door="c-store",
        ),
    ]


STORESCU = "/usr/bin/storescu"  # dcmtk's (PATH may hold another)


def fresh_copies(files: list[bytes]) -> list[bytes]:
    """The files under new Study, Series and SOP Instance UIDs (the same new UID for
    the same old one): the C-STORE row stores new instances, not the STOW row's again.
    They belong to a patient and a date that no QIDO row asks for (as the warm-up's
    do), so the QIDO rows' expected answers, taken from the corpus, stay true."""
    import pydicom
    from pydicom.uid import generate_uid

    new: dict[str, str] = {}
    out = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            old = str(ds.data_element(keyword).value)
            ds.data_element(keyword).value = new.setdefault(old, generate_uid())
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "ZZCSTORE^COPY", "ZZCSTORE"
        ds.StudyDate = ds.SeriesDate = "19990102"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def c_store(
    server: Server, files: list[bytes], clients: int, work: Path, timeout: float
) -> Outcome:
    """dcmtk storescu, ``clients`` at once, one association each, each sending its share
    one C-STORE at a time as a modality does; every instance must then be found by
    QIDO-RS (both servers answer it), else the row is WRONG."""
    import pydicom

    out = Outcome()
    folders = [work / f"c-store-{server.name}-{c}" for c in range(clients)]
    series: dict[tuple[str, str], int] = {}
    for c, folder in enumerate(folders):
        folder.mkdir(parents=True)
        for i in range(c, len(files), clients):
            (folder / f"{i:06d}.dcm").write_bytes(files[i])
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        series[key] = series.get(key, 0) + 1
    os.sync()
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                f"BENCH{c}",
                "-aec",
                server.dimse_aet,
                "127.0.0.1",
                str(server.dimse_port),
                "+sd",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for c, folder in enumerate(folders)
    ]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout * len(files))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0 or b"Store Failed" in err or b"E: " in err:
            errors.append(err.decode(errors="replace")[-300:])
    out.seconds = time.perf_counter() - t0
    out.cpu_s = server.cpu_seconds() - cpu0
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    if errors:
        out.status = f"FAILED: storescu: {errors[0]}"
        return out
    found = 0
    for (study, uid), expected in series.items():
        url = f"http://127.0.0.1:{server.port}{server.root}/studies/{study}/series/{uid}/instances"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                found += min(expected, len(json.loads(r.read() or b"[]")))
        except OSError:
            pass
    if found != len(files):
        out.status = f"WRONG: {found} of {len(files)} stored instances found by QIDO-RS"
        return out
    out.count, out.bytes = len(files), sum(len(f) for f in files)
    return out


def ingest_bodies(files: list[bytes], batch: int) -> list[tuple[bytes, str, int]]:
    bodies = []
    chunk = 1 if files and len(files[0]) > 8_000_000 else batch
    for i in range(0, len(files), chunk):
        group = files[i : i + chunk]
        bodies.append((multipart_body(group), MULTIPART, len(group)))
    return bodies


def run_row(
    s: Server,
    row: Row,
    corpus: Corpus,
    preset: Preset,
    clients: int,
    seconds: float,
    args: argparse.Namespace,
    restarts: dict[str, int],
) -> dict[str, Any]:
    """One server, one row, once: a server found dead is restarted first; one that dies
    in a load row is restarted and the row run again (``--retries`` times)."""
    crashes = 0
    death = ""
    while True:
        if s.exit_code() is not None:  # died: start it again on its storage
            try:
                s.restart()
                restarts[s.name] += 1
                settle(s)
            except Exception as exc:  # noqa: BLE001
                return {"status": f"not run: restart failed ({exc})"[:200]}
        if row.door == "c-store":
            files = fresh_copies(corpus.groups[row.group])
            outcome = c_store(s, files, clients, args.work, args.timeout)
        elif row.group:
            bodies = ingest_bodies(corpus.groups[row.group], preset.batch)
            # start from clean page cache: on ext4 an fsync also waits for the writeback
            # of what the other server wrote just before (data=ordered journal commits)
            os.sync()
            outcome = uvloop.run(ingest(s, bodies, clients, args.timeout))
        else:
            outcome = uvloop.run(
                drive(s, row.requests, clients, seconds, preset.warmup, args.timeout)
            )
        result = outcome.summary(row.unit)
        print(f"  {row.label:<48} {s.name:<8} {result}", flush=True)
        if not outcome.status.startswith("DIED"):
            break
        crashes += 1
        death = outcome.status
        result["log_tail"] = s.log_tail()[-600:]
        if crashes > args.retries or row.group:  # a half-done ingest: no retry
            break
    if crashes and result["status"] == "ok":
        result["crashes"] = crashes
        result["death"] = death
    return result


def pick(runs: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    """The round of median throughput (this machine's speed drifts), or the first that
    failed: a server that failed any round fails the row."""
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        return failed[0]
    ranked = sorted(runs, key=lambda r: r[unit])
    chosen = dict(ranked[len(ranked) // 2])
    if len(runs) > 1:
        chosen["rounds"] = [r[unit] for r in runs]
    crashes = sum(r.get("crashes", 0) for r in runs)
    if crashes:
        chosen["crashes"] = crashes
        chosen["death"] = next(r["death"] for r in runs if r.get("death"))
    return chosen


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def ratio(p: dict[str, Any], o: dict[str, Any], unit: str) -> str:
    if p["status"] != "ok" and o["status"] != "ok":
        return "both failed"
    if p["status"] != "ok":
        return "Pictor failed"
    if o["status"] != "ok":
        return "Orthanc failed"
    return f"{p[unit] / o[unit]:.2f}"


def fmt(result: dict[str, Any] | None, unit: str) -> str:
    if result is None:
        return "-"
    if result["status"] != "ok":
        return result["status"].split(":")[0]
    crashed = f" (after {result['crashes']} DIED)" if result.get("crashes") else ""
    return f"{result[unit]:,.1f}{crashed}"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| row | unit | Pictor | Orthanc | Pictor / Orthanc | MB/s P / O "
        "| p50 ms P / O | server CPU ms per unit P / O |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for row in results["rows"]:
        p, o, unit = row.get("pictor"), row.get("orthanc"), row["unit"]
        r = ratio(p, o, unit) if p and o else "-"

        def pair(k: str, p: dict[str, Any] | None = p, o: dict[str, Any] | None = o) -> str:
            a = "-" if not p or k not in p else f"{p[k]:,.1f}"
            b = "-" if not o or k not in o else f"{o[k]:,.1f}"
            return f"{a} / {b}"

        lines.append(
            f"| {row['label']} | {unit} | {fmt(p, unit)} | {fmt(o, unit)} | {r} "
            f"| {pair('mb_per_s')} | {pair('p50_ms')} | {pair('server_cpu_ms_per_unit')} |"
        )
        for name, res in (("Pictor", p), ("Orthanc", o)):
            if res and res["status"] != "ok":
                notes.append(f"- {row['label']}: {name} {res['status']}")
            elif res and res.get("crashes"):
                notes.append(
                    f"- {row['label']}: {name} {res['death']} ({res['crashes']} time(s)); "
                    "restarted, the figure is from the run after"
                )
    lines.append("")
    for name, s in results["servers"].items():
        lines.append(
            f"{name}: peak memory {s['peak_pss_mb']:,.0f} MB PSS ({s['peak_rss_sum_mb']:,.0f} MB "
            "RSS summed over its processes), "
            f"CPU {s['cpu_s']:,.1f} s over the run, restarts after a death: {s['restarts']}"
        )
        kinds = s.get("peak_pss_mb_by_kind") or {}
        if len(kinds) > 1:
            lines.append(
                "  at the peak: "
                + ", ".join(
                    f"{k} {v:,.0f} MB" for k, v in sorted(kinds.items(), key=lambda i: -i[1])
                )
            )
    if notes:
        lines += ["", "Failures:", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def enter_netns(mode: str) -> None:
    """As root, re-run this command inside a new network namespace with only loopback up;
    returns only inside it (or when no namespace is to be used)."""
    if mode == "off" or os.environ.get("PICTOR_BENCH_NETNS"):
        return
    if os.geteuid() != 0 or not shutil.which("ip"):
        if mode == "on":
            raise SystemExit("--netns on needs root and iproute2's ip")
        print("not root: no network namespace; Orthanc has remote access off", flush=True)
        return
    name = f"pictorbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "PICTOR_BENCH_NETNS": name}
        script = str(Path(__file__).resolve())
        code = subprocess.call(
            ["ip", "netns", "exec", name, sys.executable, script, *sys.argv[1:]], env=env
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    raise SystemExit(code)


def interfaces() -> list[str]:
    return sorted(psutil.net_if_addrs())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--seconds", type=float, help="measured seconds per load row")
    parser.add_argument("--clients", type=int, help="concurrent keep-alive clients")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--servers", default="pictor,orthanc")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="after a server died in a load row: restart it and run the row again (times)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="load rows: rounds per server, alternating; the median round is reported",
    )
    parser.add_argument("--rows", default="", help="only rows whose key matches this regex")
    parser.add_argument("--netns", choices=["auto", "on", "off"], default="auto")
    parser.add_argument(
        "--pictor-workers", type=int, default=0, help="server processes (0: its default)"
    )
    parser.add_argument(
        "--orthanc-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override an Orthanc setting, e.g. StorageAccessOnFind='\"Never\"'",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "compare.json",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.json = args.json.resolve()
    enter_netns(args.netns)

    preset = PRESETS[args.preset]
    clients = args.clients or preset.clients
    seconds = args.seconds or preset.seconds
    rng = random.Random(preset.spec.seed)
    options = {}
    for item in args.orthanc_option:
        key, _, raw = item.partition("=")
        options[key] = json.loads(raw)

    print(f"network interfaces: {', '.join(interfaces())}", flush=True)
    t = time.perf_counter()
    corpus = _corpus.build(preset.spec)
    sizes = {g: (len(f), corpus.group_bytes(g)) for g, f in corpus.groups.items()}
    print(
        f"corpus ({time.perf_counter() - t:.1f} s): {len(corpus.studies):,} studies, "
        + ", ".join(f"{g} {n:,} instances {b / 1e6:,.1f} MB" for g, (n, b) in sizes.items()),
        flush=True,
    )
    rows = ingest_rows(corpus) + qido_rows(corpus, rng, 60) + wado_rows(corpus, rng)
    if args.rows:
        rows = [r for r in rows if re.search(args.rows, r.key) or r.unit == "instances/s"]

    tmp = Path(tempfile.mkdtemp(prefix="pictor-compare-", dir=os.environ.get("PICTOR_BENCH_DIR")))
    args.work = tmp
    servers: list[Server] = []
    if "pictor" in args.servers:
        (tmp / "pictor").mkdir()
        servers.append(PictorServer(tmp / "pictor", args.pictor_workers))
    if "orthanc" in args.servers:
        (tmp / "orthanc").mkdir()
        servers.append(OrthancServer(tmp / "orthanc", options))
    restarts = {s.name: 0 for s in servers}
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "preset": args.preset,
        "spec": asdict(preset.spec),
        "clients": clients,
        "seconds_per_row": seconds,
        "rounds": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        },
        "network_namespace": os.environ.get("PICTOR_BENCH_NETNS"),
        "corpus": {g: {"instances": n, "mb": round(b / 1e6, 1)} for g, (n, b) in sizes.items()},
        "rows": [],
    }
    monitor = Monitor(servers)
    try:
        for s in servers:
            s.start()
            print(f"{s.name} ready on 127.0.0.1:{s.port}", flush=True)
        if any(isinstance(s, OrthancServer) for s in servers):
            orthanc = next(s for s in servers if isinstance(s, OrthancServer))
            results["orthanc"] = {"version": orthanc.version, "config": orthanc.config}
        monitor.start()
        warm = ingest_bodies(_corpus.warmup(preset.spec), preset.batch)
        for s in servers:  # not measured: both servers' first STOW pays their cold start
            outcome = uvloop.run(ingest(s, warm, clients, args.timeout))
            waited = settle(s)
            print(
                f"  warm-up STOW {s.name:<8} {outcome.summary('instances/s')['status']}, "
                f"then {waited:.0f} s until idle",
                flush=True,
            )
        for n, row in enumerate(rows):
            entry: dict[str, Any] = {"key": row.key, "label": row.label, "unit": row.unit}
            rounds = 1 if row.group else args.rounds  # an ingest stores its group once
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for r in range(rounds):
                order = servers if (n + r) % 2 == 0 else servers[::-1]  # who goes first
                for s in order:
                    runs[s.name].append(
                        run_row(s, row, corpus, preset, clients, seconds, args, restarts)
                    )
            for s in servers:
                entry[s.name] = pick(runs[s.name], row.unit)
            results["rows"].append(entry)
    finally:
        monitor.halt.set()
        results["servers"] = {}
        for s in servers:
            results["servers"][s.name] = {
                "peak_pss_mb": round(monitor.peak_pss[s.name] / 1e6, 1),
                "peak_pss_mb_by_kind": {
                    k: round(v / 1e6, 1) for k, v in sorted(monitor.peak_kinds[s.name].items())
                },
                "peak_rss_sum_mb": round(monitor.peak_rss[s.name] / 1e6, 1),
                "cpu_s": round(s.cpu_seconds(), 1),
                "restarts": restarts[s.name],
            }
            tree = s.processes()
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"stopping {s.name}: {exc}", file=sys.stderr)
            left = reap(tree)
            if left:
                results["servers"][s.name]["left_running_after_stop"] = left
                print(f"{s.name}: {len(left)} process(es) outlived the stop: {left}")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = table(results)
    print()
    print(
        f"{results['date']}, preset {args.preset}, {clients} clients, {seconds:g} s per row, "
        f"{args.rounds} round(s), "
        f"load average before {results['machine']['loadavg_before']}"
    )
    print(text)
    results["table"] = text
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    if not all(r.get(s.name, {}).get("status") == "ok" for r in results["rows"] for s in servers):
        print("(some rows failed; see above)")


if __name__ == "__main__":
    main()
