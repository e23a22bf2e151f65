"""WADO-RS retrieval figures, each against a reference measured in the same run.

    python benchmarks/wado.py [--instances 200] [--clients 4] [--seconds 8]

Seeds a fresh archive over STOW with a native CT series (512 x 512, 16-bit), the same
slices as JPEG 2000 lossless, and a 1,000-instance series, then measures:

* raw frames (``transfer-syntax=*``) frames/s and MB/s, versus the same frame bytes
  served as static files by a minimal ASGI app under the same uvicorn set-up
  (target: at least 70 %), with ``--raw-clients`` connections (default 8);
* JPEG 2000 lossless -> native frames/s with one client and with ``--clients``, versus
  pydicom + pylibjpeg decoding the same frames in a bare loop, one process per core
  (target: at least 90 %, issue #20 item 4);
* series metadata latency for the 1,000-instance series (p50 / p95, one client);
* whole-study retrieve MB/s as stored (multipart/related, 1 and ``--clients`` clients);
* rendered JPEG frames/s;
* HTJ2K (``--only htj2k``): frames of the native and of the JPEG 2000 series asked for
  as ``image/jphc`` (transcoded to HTJ2K lossless on request) against the same frames
  as stored: bytes per frame, frames/s, p50 latency with one client and with
  ``--clients``, and what decoding one frame costs a client (OpenJPEG, in this process).

Every answer is checked (status, part count, frame bytes) so a fast wrong answer fails.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pydicom
import pydicom.uid
import uvloop

from _client import Connection, stow
from server import PictorProcess, free_port
from synth import ct_slice, new_uids

STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE = 'multipart/related; type="application/octet-stream"'
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
JPHC = 'multipart/related; type="image/jphc"'

#: the reference: a file read and sent per request, nothing else (no framework)
STATIC_APP = """
import os
ROOT = os.environ["STATIC_ROOT"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    with open(os.path.join(ROOT, scope["path"].lstrip("/")), "rb") as f:
        body = f.read()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def j2k_copy(item: tuple[bytes, str]) -> bytes:
    """The slice as JPEG 2000 lossless, in another series (same study)."""
    data, series = item
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart_parts(headers: dict[str, str], body: bytes) -> list[bytes]:
    boundary = headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    delimiter = b"\r\n--" + boundary.encode()
    sections = (b"\r\n" + body).split(delimiter)[1:-1]
    return [s.split(b"\r\n\r\n", 1)[1] for s in sections]


def single_part_size(headers: dict[str, str], body: bytes) -> int:
    """The size of the one part of a multipart answer, found without copying or scanning
    the body: under load the client shares the server's two cores, and copying each
    512 KB answer three times (as :func:`multipart_parts` does) took CPU from the server
    being measured. Checks the opening boundary and part headers, and that the body ends
    with the closing boundary (the bytes themselves are compared once, in verify())."""
    boundary = headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    opening, closing = b"--" + boundary, b"\r\n--" + boundary + b"--"
    # the first boundary may follow a CRLF (RFC 2046 5.1.1: a delimiter is CRLF--boundary)
    first = 2 if body.startswith(b"\r\n") else 0
    if not body.startswith(opening + b"\r\n", first):
        raise RuntimeError("multipart body does not open with its boundary")
    start = body.index(b"\r\n\r\n", first, first + 4096) + 4
    end = len(body) - len(closing) - (2 if body.endswith(b"\r\n") else 0)
    if not body.startswith(closing, end):
        raise RuntimeError("multipart body does not end with the closing boundary")
    return end - start


async def load(
    port: int,
    paths: list[str],
    accept: str,
    clients: int,
    seconds: float,
    check: Callable[[int, dict[str, str], bytes], int],
) -> tuple[int, int, float, list[float]]:
    """GET the paths round robin with ``clients`` connections for ``seconds``; returns
    (requests, payload bytes, elapsed, latencies)."""
    count = 0
    size = 0
    latencies: list[float] = []
    stop = 0.0

    async def client(offset: int) -> None:
        nonlocal count, size
        conn = Connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                status, headers, body = await conn.get(paths[i % len(paths)], accept)
                latencies.append(time.perf_counter() - t0)
                size += check(status, headers, body)
                count += 1
                i += clients
        finally:
            await conn.close()

    # warm up (codec workers start, caches fill), then measure
    warm_until = time.perf_counter() + min(2.0, seconds / 4)
    conns = [Connection("127.0.0.1", port) for _ in range(clients)]
    try:

        async def warm(k: int) -> None:
            i = k
            while time.perf_counter() < warm_until:
                status, headers, body = await conns[k].get(paths[i % len(paths)], accept)
                check(status, headers, body)
                i += clients

        await asyncio.gather(*(warm(k) for k in range(clients)))
    finally:
        for conn in conns:
            await conn.close()
    stop = time.perf_counter() + seconds
    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return count, size, time.perf_counter() - start, latencies


def median_index(ratios: list[float]) -> int:
    """The round whose ratio is the median (the upper one of an even count): its figures
    are reported next to the ratio."""
    return sorted(range(len(ratios)), key=lambda k: ratios[k])[len(ratios) // 2]


def bare_decode(args: tuple[list[str], float]) -> int:
    """One process of the reference loop: decode frame 1 of each file until time's up."""
    from pydicom.pixels import pixel_array

    paths, seconds = args
    stop = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < stop:
        pixel_array(paths[n % len(paths)], index=0).tobytes()
        n += 1
    return n


def run(coro: Awaitable[object]) -> object:
    return uvloop.run(coro)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="CT slices per series")
    parser.add_argument("--metadata-instances", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--raw-clients",
        type=int,
        default=8,
        help="connections for the raw frames comparison (both servers): with only as many "
        "connections as server processes, the kernel's hand-out of connections to processes "
        "decides the figure (measured: round ratios from 0.39 to 0.95 with 4)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (raw, j2k)")
    parser.add_argument("--workers", type=int, default=0, help="server processes (0: default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--only",
        default="raw,j2k,metadata,study,rendered,htj2k",
        help="comma list of measurements (raw, j2k, metadata, study, rendered, htj2k)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pictor-wado-bench-") as tmp:
        root = Path(tmp)
        study, series = new_uids()
        native = [ct_slice(study, series, i, seed=i) for i in range(args.instances)]
        print(f"encoding {args.instances} slices as JPEG 2000 lossless ...", flush=True)
        with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as workers:
            j2k_series = new_uids()[1]
            j2k = workers.map(j2k_copy, [(d, j2k_series) for d in native], chunksize=8)
        meta_study, meta_series = new_uids()
        small = [
            ct_slice(meta_study, meta_series, i, rows=64, cols=64)
            for i in range(args.metadata_instances)
        ]

        server = PictorProcess(root / "data", workers=args.workers).start()
        try:
            run(stow(server.port, native + j2k + small))
            results = measure(
                server, args, study, series, native, j2k, meta_study, meta_series, root
            )
        finally:
            server.stop()

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def measure(
    server: PictorProcess,
    args: argparse.Namespace,
    study: str,
    series: str,
    native: list[bytes],
    j2k: list[bytes],
    meta_study: str,
    meta_series: str,
    root: Path,
) -> dict[str, object]:
    port, clients, seconds = server.port, args.clients, args.seconds
    only = set(args.only.split(","))
    native_ds = [pydicom.dcmread(io.BytesIO(d)) for d in native]
    j2k_ds = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True) for d in j2k]

    def frame_path(ds: pydicom.Dataset) -> str:
        return (
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/1"
        )

    raw_paths = [frame_path(ds) for ds in native_ds]
    frame_bytes = len(native_ds[0].PixelData)

    def check_frame(status: int, headers: dict[str, str], body: bytes) -> int:
        if status != 200:
            raise RuntimeError(f"frame request answered {status}: {body[:200]!r}")
        size = single_part_size(headers, body)
        if size != frame_bytes:
            raise RuntimeError(f"frame of {size} bytes, expected {frame_bytes}")
        return size

    # correctness once, byte for byte
    async def verify() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            pairs = [(ds, STAR, ds) for ds in native_ds[:20]]
            pairs += [(j2k_ds[i], NATIVE, native_ds[i]) for i in range(5)]
            for ds, accept, original in pairs:
                status, headers, body = await conn.get(frame_path(ds), accept)
                (part,) = multipart_parts(headers, body)
                if status != 200 or part != original.PixelData:
                    raise RuntimeError(f"wrong frame for {ds.SOPInstanceUID}")
        finally:
            await conn.close()

    run(verify())
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "clients": clients,
        "raw_frame_clients": args.raw_clients,
        "server_processes": server.workers or "default",
    }

    if "raw" in only:
        # 1. raw frames versus a static-file ASGI app, in alternating rounds (this
        # machine's speed drifts; each round's ratio compares neighbours in time)
        static_root = root / "static"
        static_root.mkdir()
        for i, ds in enumerate(native_ds):
            (static_root / f"{i}.raw").write_bytes(ds.PixelData)
        (root / "static_app.py").write_text(STATIC_APP)
        static_port = free_port()
        workers = server.workers or min(8, 2 * (os.cpu_count() or 1))
        command = f"-m uvicorn static_app:app --port {static_port} --workers {workers}"
        command += " --loop uvloop --http httptools --log-level warning --no-access-log"
        static = subprocess.Popen(
            [sys.executable, *command.split()],
            cwd=root,
            env={**os.environ, "STATIC_ROOT": str(static_root)},
        )

        def check_static(status: int, headers: dict[str, str], body: bytes) -> int:
            if status != 200 or len(body) != frame_bytes:
                raise RuntimeError(f"static answered {status} with {len(body)} bytes")
            return len(body)

        static_paths = [f"/{i}.raw" for i in range(len(native_ds))]
        rounds: list[tuple[float, float, float, float]] = []
        try:
            wait_for(static_port)
            for _ in range(args.rounds):
                n, size, elapsed, _ = run(  # type: ignore[misc]
                    load(port, raw_paths, STAR, args.raw_clients, seconds, check_frame)
                )
                n2, size2, elapsed2, _ = run(  # type: ignore[misc]
                    load(static_port, static_paths, "*/*", args.raw_clients, seconds, check_static)
                )
                rounds.append(
                    (n / elapsed, size / elapsed / 1e6, n2 / elapsed2, size2 / elapsed2 / 1e6)
                )
        finally:
            static.terminate()
            static.wait()
        ratios = [r[0] / r[2] for r in rounds]
        best = median_index(ratios)
        results["raw_frames"] = {
            "pictor_frames_per_s": round(rounds[best][0], 1),
            "pictor_mb_per_s": round(rounds[best][1], 1),
            "static_asgi_frames_per_s": round(rounds[best][2], 1),
            "static_asgi_mb_per_s": round(rounds[best][3], 1),
            "ratio_median": round(ratios[best], 3),
            "ratios": [round(r, 3) for r in ratios],
        }
        print("raw frames:", results["raw_frames"], flush=True)

    if "j2k" in only:
        # 2. JPEG 2000 lossless -> native versus a bare decode loop
        j2k_paths = [frame_path(ds) for ds in j2k_ds]
        j2k_files = []
        for i, data in enumerate(j2k):
            path = root / f"j2k{i}.dcm"
            path.write_bytes(data)
            j2k_files.append(str(path))
        cores = os.cpu_count() or 1
        # per round: Pictor with one client, with --clients, and the bare loop
        j2k_rounds: list[tuple[float, float, float, float]] = []
        with multiprocessing.get_context("spawn").Pool(cores) as pool:
            pool.map(bare_decode, [(j2k_files[:4], 0.5)] * cores)  # warm the imports
            # alternating rounds, as for raw frames: the machine's speed drifts
            for _ in range(args.rounds):
                figures = []
                for c in (1, clients):
                    n, size, elapsed, latencies = run(  # type: ignore[misc]
                        load(port, j2k_paths, NATIVE, c, seconds, check_frame)
                    )
                    figures.append(n / elapsed)
                    if c == 1:
                        latencies.sort()
                        one_p50 = latencies[len(latencies) // 2] * 1e3
                t0 = time.perf_counter()
                counts = pool.map(
                    bare_decode, [(j2k_files[k::cores], seconds) for k in range(cores)]
                )
                bare_rate = sum(counts) / (time.perf_counter() - t0)
                j2k_rounds.append((figures[0], figures[1], bare_rate, one_p50))
        one_ratios = [r[0] / r[2] for r in j2k_rounds]
        j2k_ratios = [r[1] / r[2] for r in j2k_rounds]
        mid = median_index(j2k_ratios)
        mid_one = median_index(one_ratios)
        one = bare_decode((j2k_files, seconds / 2)) / (seconds / 2)
        results["j2k_to_native"] = {
            "pictor_frames_per_s": round(j2k_rounds[mid][1], 1),
            "pictor_frames_per_s_1_client": round(j2k_rounds[mid_one][0], 1),
            "pictor_p50_ms_1_client": round(j2k_rounds[mid_one][3], 1),
            "bare_loop_frames_per_s": round(j2k_rounds[mid][2], 1),
            "bare_loop_processes": cores,
            "bare_loop_one_process_frames_per_s": round(one, 1),
            "ratio_median": round(j2k_ratios[mid], 3),
            "ratios": [round(r, 3) for r in j2k_ratios],
            "ratio_median_1_client": round(one_ratios[mid_one], 3),
            "ratios_1_client": [round(r, 3) for r in one_ratios],
        }
        print("j2k -> native:", results["j2k_to_native"], flush=True)

    if "metadata" in only:
        # 3. metadata of a 1,000-instance series, one client
        meta_path = f"/dicom-web/studies/{meta_study}/series/{meta_series}/metadata"

        def check_meta(status: int, headers: dict[str, str], body: bytes) -> int:
            if status != 200 or len(json.loads(body)) != args.metadata_instances:
                raise RuntimeError(f"metadata answered {status}")
            return len(body)

        n, size, elapsed, latencies = run(
            load(port, [meta_path], "application/dicom+json", 1, seconds / 2, check_meta)
        )  # type: ignore[misc]
        latencies.sort()
        results["series_metadata"] = {
            "instances": args.metadata_instances,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
            "mb": round(size / n / 1e6, 2),
            "requests_per_s": round(n / elapsed, 1),
        }
        n, size, elapsed, _ = run(
            load(port, [meta_path], "application/dicom+json", clients, seconds / 2, check_meta)
        )  # type: ignore[misc]
        results["series_metadata"]["instances_per_s_at_clients"] = round(  # type: ignore[index]
            n * args.metadata_instances / elapsed, 1
        )
        print("series metadata:", results["series_metadata"], flush=True)

    if "study" in only:
        # 4. whole study as stored
        study_path = f"/dicom-web/studies/{study}"
        total = sum(len(d) for d in native + j2k)

        def check_study(status: int, headers: dict[str, str], body: bytes) -> int:
            # cheap checks (the client shares the 2 cores): part count and total size
            boundary = headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
            parts = body.count(b"\r\n--" + boundary.encode() + b"\r\n")
            if status != 200 or parts != len(native) * 2 or len(body) < total:
                raise RuntimeError(f"study retrieve answered {status} with {parts} parts")
            return len(body)

        figures = {}
        for c in (1, clients):
            n, size, elapsed, _ = run(
                load(
                    port,
                    [study_path],
                    STAR.replace("octet-stream", "dicom"),
                    c,
                    seconds,
                    check_study,
                )
            )  # type: ignore[misc]
            figures[f"mb_per_s_{c}_clients"] = round(size / elapsed / 1e6, 1)
        results["whole_study"] = {
            "instances": 2 * len(native),
            "mb": round(total / 1e6, 1),
            **figures,
        }
        print("whole study:", results["whole_study"], flush=True)

    if "rendered" in only:
        # 5. rendered JPEG
        rendered_paths = [p.replace("/frames/1", "/rendered") for p in raw_paths]

        def check_jpeg(status: int, headers: dict[str, str], body: bytes) -> int:
            if status != 200 or body[:2] != b"\xff\xd8":
                raise RuntimeError(f"rendered answered {status}")
            return len(body)

        n, size, elapsed, _ = run(
            load(port, rendered_paths, "image/jpeg", clients, seconds, check_jpeg)
        )  # type: ignore[misc]
        results["rendered_jpeg_per_s"] = round(n / elapsed, 1)
        print("rendered:", results["rendered_jpeg_per_s"], flush=True)

    if "htj2k" in only:
        results["htj2k"] = htj2k_figures(port, clients, seconds, native_ds, j2k_ds, frame_path)
        print("htj2k:", json.dumps(results["htj2k"], indent=2), flush=True)
    return results


def decode_frame(body: bytes, like: pydicom.Dataset, syntax: str) -> bytes:
    """One returned frame decoded by pydicom (OpenJPEG for both JPEG 2000 kinds), as a
    client would, to native little endian bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import pixel_array

    ds = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored"):
        setattr(ds, keyword, like.get(keyword))
    ds.HighBit, ds.PixelRepresentation = like.HighBit, like.PixelRepresentation
    ds.PhotometricInterpretation, ds.NumberOfFrames = like.PhotometricInterpretation, 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([body])
    ds["PixelData"].VR = "OB"
    return bytes(
        pixel_array(ds, index=0).astype("<i2" if like.PixelRepresentation else "<u2").tobytes()
    )


def htj2k_figures(
    port: int,
    clients: int,
    seconds: float,
    native_ds: list[pydicom.Dataset],
    j2k_ds: list[pydicom.Dataset],
    frame_path: Callable[[pydicom.Dataset], str],
) -> dict[str, object]:
    """Frames as stored against the same frames as HTJ2K lossless (item 5 of issue #20):
    every HTJ2K answer of a sample is decoded and compared with the native frame."""
    originals = [ds.PixelData for ds in native_ds]

    async def sample(paths: list[str], accept: str, syntax: str | None) -> list[bytes]:
        conn = Connection("127.0.0.1", port)
        try:
            out = []
            for i, path in enumerate(paths[:10]):
                status, headers, body = await conn.get(path, accept)
                (part,) = multipart_parts(headers, body)
                if status != 200:
                    raise RuntimeError(f"{path} answered {status}")
                if syntax is not None and decode_frame(part, native_ds[i], syntax) != originals[i]:
                    raise RuntimeError(f"{path} as {syntax} does not decode to the original")
                out.append(part)
            return out
        finally:
            await conn.close()

    def any_frame(status: int, headers: dict[str, str], body: bytes) -> int:
        if status != 200:
            raise RuntimeError(f"frame answered {status}: {body[:200]!r}")
        return single_part_size(headers, body)

    native_paths = [frame_path(ds) for ds in native_ds]
    j2k_paths = [frame_path(ds) for ds in j2k_ds]
    cases = {
        "native as stored": (native_paths, STAR, None),
        "JPEG 2000 as stored": (j2k_paths, STAR, J2K_LOSSLESS),
        "native -> HTJ2K": (native_paths, JPHC, HTJ2K_LOSSLESS),
        "JPEG 2000 -> HTJ2K": (j2k_paths, JPHC, HTJ2K_LOSSLESS),
    }
    figures: dict[str, object] = {}
    for name, (paths, accept, syntax) in cases.items():
        parts = run(sample(paths, accept, syntax))
        assert isinstance(parts, list)
        row: dict[str, object] = {"bytes_per_frame": round(sum(map(len, parts)) / len(parts))}
        if syntax is not None:  # what a client pays to decode one frame
            t0 = time.perf_counter()
            for part, like in zip(parts, native_ds, strict=False):
                decode_frame(part, like, syntax)
            row["client_decode_ms"] = round((time.perf_counter() - t0) / len(parts) * 1e3, 2)
        for c in (1, clients):
            n, size, elapsed, latencies = run(load(port, paths, accept, c, seconds / 2, any_frame))  # type: ignore[misc]
            latencies.sort()
            row[f"frames_per_s_{c}_clients"] = round(n / elapsed, 1)
            row[f"p50_ms_{c}_clients"] = round(latencies[len(latencies) // 2] * 1e3, 2)
        figures[name] = row
    return figures


def wait_for(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


if __name__ == "__main__":
    main()
