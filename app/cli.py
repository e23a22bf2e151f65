"""``pictor``: the command line (serve, import)."""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app.config import ConfigError, Settings, load_settings
from app.viewer import OHIF_VERSION


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "dimse_port": getattr(args, "dimse_port", None),
        "dimse_ae_title": getattr(args, "dimse_ae_title", None),
        "workers": getattr(args, "workers", None),
        "cors_origins": getattr(args, "cors_origins", None),
        "viewer_dir": getattr(args, "viewer_dir", None),
        "log_format": getattr(args, "log_format", None),
    }
    try:
        return load_settings(overrides)
    except ConfigError as exc:
        sys.exit(f"pictor: {exc}")


def serve(args: argparse.Namespace) -> int:
    """Run the archive until Ctrl-C / SIGTERM; the embedded PostgreSQL stops with it."""
    import asyncio
    import os

    import msgspec
    import uvicorn

    from app.config import to_environment
    from app.index.database import EmbeddedPostgres
    from app.main import prepare
    from app.observability import MULTIPROC_VARIABLE, setup_logging, uvicorn_log_config

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    embedded: EmbeddedPostgres | None = None
    dimse: subprocess.Popen[bytes] | None = None
    try:
        # every process counts into its own files here; /metrics adds them up
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ[MULTIPROC_VARIABLE] = str(metrics_dir)
        if not settings.database_url:
            embedded = EmbeddedPostgres(settings.pg_dir)
            settings = msgspec.structs.replace(settings, database_url=embedded.start())
        asyncio.run(prepare(settings, settings.database_url))
        # server processes read their settings from the environment
        os.environ.update(to_environment(settings))
        if settings.dimse_port:
            dimse = _start_dimse(settings)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        banner = [
            f"Pictor DICOMweb at http://{host}:{settings.port}/dicom-web",
            f"Data directory: {settings.data_dir}",
        ]
        for line in banner:
            if settings.log_format == "json":
                logging.getLogger("pictor").info(line)
            else:
                print(line, flush=True)
        uvicorn.run(
            "app.main:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.worker_count,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level=settings.log_level,
            log_config=uvicorn_log_config(settings.log_level, settings.log_format),
            access_log=False,  # Pictor's own (PICTOR_ACCESS_LOG) has the route and timing
            timeout_graceful_shutdown=10,
        )
    finally:
        if dimse is not None:
            _stop_dimse(dimse)
        if embedded is not None:
            embedded.stop()
    return 0


def _start_dimse(settings: Settings, timeout: float = 30) -> subprocess.Popen[bytes]:
    """Start the DIMSE process (``python -m app.dimse``, settings from the environment)
    and wait until it accepts connections, so a ready server is ready on both doors."""
    proc = subprocess.Popen([sys.executable, "-m", "app.dimse"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"pictor: the DIMSE process exited ({proc.returncode}); see above")
        try:
            with socket.create_connection((settings.host, settings.dimse_port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    _stop_dimse(proc)
    sys.exit(f"pictor: the DIMSE process did not listen on port {settings.dimse_port}")


def _stop_dimse(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: open associations are aborted, the pool closed
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def import_(args: argparse.Namespace) -> int:
    from app.importer import run_import

    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_import(settings, [Path(p) for p in args.paths], jobs=args.jobs)


def viewer_install(args: argparse.Namespace) -> int:
    """Fetch OHIF from the npm registry into the viewer directory (served at /viewer)."""
    from app.viewer import ViewerError, install

    settings = _settings(args)
    try:
        install(settings.viewer_path, args.version)
    except ViewerError as exc:
        sys.exit(f"pictor: {exc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pictor", description="Pictor imaging archive")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", help="data directory (env PICTOR_DATA_DIR; default ./pictor-data)"
        )
        p.add_argument(
            "--workers", type=int, help="worker processes for parsing (env PICTOR_WORKERS)"
        )

    s = sub.add_parser("serve", help="run the archive (DICOMweb over HTTP, DIMSE)")
    s.add_argument("--host", help="bind address (env PICTOR_HOST; default 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (env PICTOR_PORT; default 8042)")
    s.add_argument(
        "--dimse-port",
        type=int,
        help="DIMSE port (env PICTOR_DIMSE_PORT; default 11112; 0 turns DIMSE off)",
    )
    s.add_argument("--dimse-ae-title", help="DIMSE AE title (env PICTOR_AE_TITLE; default PICTOR)")
    s.add_argument(
        "--cors-origins",
        help="web origins allowed to read responses, comma separated, '*' for any "
        "(env PICTOR_CORS_ORIGINS; default none)",
    )
    s.add_argument(
        "--viewer-dir",
        help="OHIF bundle served at /viewer (env PICTOR_VIEWER_DIR; default DATA_DIR/viewer)",
    )
    s.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or JSON lines for log collectors (env PICTOR_LOG_FORMAT; default text)",
    )
    common(s)
    s.set_defaults(func=serve)

    i = sub.add_parser("import", help="import DICOM files and folders into the archive")
    i.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    i.add_argument(
        "--jobs", type=int, default=0, help="files analysed at once (default: 2 per core)"
    )
    common(i)
    i.set_defaults(func=import_)

    v = sub.add_parser("viewer", help="the built-in web viewer (OHIF) served at /viewer")
    vsub = v.add_subparsers(dest="action", required=True)
    vi = vsub.add_parser("install", help="install OHIF from the npm registry (needs npm)")
    vi.add_argument("--version", default=OHIF_VERSION, help=f"@ohif/app version ({OHIF_VERSION})")
    vi.add_argument(
        "--viewer-dir", help="where to put it (env PICTOR_VIEWER_DIR; default DATA_DIR/viewer)"
    )
    vi.add_argument(
        "--data-dir", help="data directory (env PICTOR_DATA_DIR; default ./pictor-data)"
    )
    vi.set_defaults(func=viewer_install)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
