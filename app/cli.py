"""``pictor``: the command line (serve, import, viewer, token, user, link, audit)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app.config import ConfigError, Settings, load_settings
from app.viewer import OHIF_VERSION

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "dimse_port": getattr(args, "dimse_port", None),
        "dimse_ae_title": getattr(args, "dimse_ae_title", None),
        "hl7_port": getattr(args, "hl7_port", None),
        "workers": getattr(args, "workers", None),
        "cors_origins": getattr(args, "cors_origins", None),
        "viewer_dir": getattr(args, "viewer_dir", None),
        "log_format": getattr(args, "log_format", None),
        "auth": True if getattr(args, "auth", False) else None,
        "insecure_no_auth": True if getattr(args, "insecure_no_auth", False) else None,
        "tls_cert": getattr(args, "tls_cert", None),
        "tls_key": getattr(args, "tls_key", None),
    }
    try:
        return load_settings(overrides)
    except ConfigError as exc:
        sys.exit(f"pictor: {exc}")


def serve(args: argparse.Namespace) -> int:
    """Run the archive until Ctrl-C / SIGTERM; the embedded PostgreSQL stops with it."""
    import asyncio

    import msgspec
    import uvicorn

    from app.bootstrap import EmbeddedPostgres, prepare
    from app.config import exposure_problem, to_environment
    from app.errors import PictorError
    from app.observability import MULTIPROC_VARIABLE, setup_logging, uvicorn_log_config
    from app.process import SUPERVISOR_VARIABLE, DataDirInUse, ServeLock, port_problem

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    problem = exposure_problem(settings) or _start_problem(settings)
    if problem is not None:
        sys.exit(f"pictor: {problem}")
    if not settings.auth and settings.insecure_no_auth:
        logging.getLogger("pictor").warning(
            "INSECURE: listening on %s WITHOUT ACCESS CONTROL (--insecure-no-auth): anyone "
            "who reaches this address can read and store patient images",
            settings.host,
        )
    lock = ServeLock(settings.data_dir)
    try:
        lock.acquire(port=settings.port, dimse_port=settings.dimse_port)
    except DataDirInUse as exc:
        sys.exit(f"pictor: {exc}")
    except OSError as exc:
        sys.exit(f"pictor: the data directory {settings.data_dir} cannot be used: {exc}")
    for port, what, option in (
        (settings.port, "HTTP", "--port / PICTOR_PORT"),
        (settings.dimse_port, "DIMSE", "--dimse-port / PICTOR_DIMSE_PORT"),
        (settings.hl7_port, "HL7", "--hl7-port / PICTOR_HL7_PORT"),
    ):
        problem = port_problem(settings.host, port, what, option) if port else None
        if problem:
            sys.exit(f"pictor: {problem}")
    embedded: EmbeddedPostgres | None = None
    watchdog: _Watchdog | None = None
    metrics_dir: Path | None = None
    sidecars: list[_ServerProcess] = []
    try:
        # every process counts into its own files here; /metrics adds them up. They are
        # memory-mapped: in memory (/dev/shm), not on the data disk, where a full disk
        # made writing them SIGBUS the workers (issue #19)
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() else Path(tempfile.gettempdir())
        _sweep_metrics_dirs(parent)
        metrics_dir = Path(tempfile.mkdtemp(prefix=f"pictor-metrics-{os.getpid()}-", dir=parent))
        os.environ[MULTIPROC_VARIABLE] = str(metrics_dir)
        os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())
        if not settings.database_url:
            embedded = EmbeddedPostgres(settings.pg_dir)
            settings = msgspec.structs.replace(settings, database_url=embedded.start())
        try:
            asyncio.run(prepare(settings, settings.database_url))
        except PictorError as exc:
            cause = exc.__cause__ or exc
            sys.exit(
                f"pictor: cannot use the database {_redacted(settings.database_url)} "
                f"(DATABASE_URL): {type(cause).__name__}: {cause}"
            )
        watched: list[_Watched] = []
        if embedded is not None:
            watched.append(
                _Watched("the embedded PostgreSQL", lambda: embedded.running, embedded.restart)
            )
        # server processes read their settings from the environment; deliveries, tier
        # moves and the scrub run in a process of their own, at a lower priority
        # (app.background), not in the HTTP and DIMSE processes
        settings = msgspec.structs.replace(settings, background_process=True)
        os.environ.update(to_environment(settings))
        parts: tuple[tuple[str, int | None, str], ...] = (
            ("app.background", None, "background"),
            ("app.dimse", settings.dimse_port, "DIMSE"),
            ("app.hl7", settings.hl7_port, "HL7"),
        )
        for module, listen, name in parts:
            if listen == 0:
                continue
            sidecar = _ServerProcess(module, settings.host, listen)
            sidecars.append(sidecar)
            if not sidecar.start():
                where = f" listening on port {listen}" if listen else ""
                sys.exit(f"pictor: the {name} process did not start{where}; see above")
            watched.append(_Watched(f"the {name} process", sidecar.alive, sidecar.start))
        watchdog = _Watchdog(watched)
        watchdog.start()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        scheme = "https" if settings.tls_cert else "http"
        banner = [
            f"Pictor DICOMweb at {scheme}://{host}:{settings.port}/dicom-web"
            + (" (authentication on)" if settings.auth else ""),
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
            http="app.connection:GuardedHttpToolsProtocol",  # head / body timeouts
            lifespan="on",
            log_level=settings.log_level,
            log_config=uvicorn_log_config(settings.log_level),
            access_log=False,  # Pictor's own (PICTOR_ACCESS_LOG) has the route and timing
            timeout_graceful_shutdown=10,
            # UPS-RS notification channels (PS3.18 11.13) only send; what a client sends
            # is read and ignored, so its messages are kept small
            ws_max_size=65536,
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
        )
    finally:
        if watchdog is not None:
            watchdog.stop()
        for sidecar in reversed(sidecars):
            sidecar.stop()
        if embedded is not None:
            embedded.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        lock.release()
    return 0


def _sweep_metrics_dirs(parent: Path) -> None:
    """Remove the metrics directories of servers that are gone (killed, so they could
    not remove their own)."""
    for path in parent.glob("pictor-metrics-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _start_problem(settings: Settings) -> str | None:
    """What stops a start before anything runs, in one line: DIMSE under --auth with no
    peers, a data directory that cannot be written."""
    if settings.auth and settings.dimse_port and not settings.peer_sources:
        return (
            "with --auth, DIMSE accepts only the AE titles of PICTOR_DIMSE_PEERS, "
            "and there are none: set PICTOR_DIMSE_PEERS (AET@host:port,...) or turn DIMSE "
            "off with --dimse-port 0"
        )
    if settings.auth and settings.hl7_port and not settings.hl7_peer_list:
        return (
            "with --auth, HL7 accepts connections only from PICTOR_HL7_PEERS (hosts or "
            "networks), and there are none: set them or turn HL7 off with --hl7-port 0"
        )
    directory = settings.data_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return (
            f"the data directory {directory} (--data-dir / PICTOR_DATA_DIR) is not "
            f"writable: {exc.strerror or exc}"
        )
    return None


def _redacted(url: str) -> str:
    """``url`` without its password, for a message."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class _Watched:
    """A part of the server the supervisor keeps running: ``alive()``, ``restart()``
    (True once it runs again)."""

    def __init__(self, name: str, alive: Callable[[], bool], restart: Callable[[], bool]) -> None:
        self.name = name
        self.alive = alive
        self.restart = restart


class _Watchdog:
    """Restarts what died while the server runs (issue #19): the embedded PostgreSQL
    (one kill left the archive answering 503 until a manual restart; the servers' pools
    reconnect once it answers, and requests get 503 with Retry-After until then) and
    the DIMSE process (a crash left DIMSE silently down)."""

    def __init__(self, watched: list[_Watched], interval: float = 0.5) -> None:
        import threading

        self.watched = watched
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def _run(self) -> None:
        """Each round tries every dead part once, in order (the embedded PostgreSQL
        first: the others need it). A part that fails to restart is tried again after
        ``max(interval, 1 s)``, and never holds up the restart of another: a DIMSE
        process that cannot bind its port must not keep the index down."""
        log = logging.getLogger("pictor")
        retry = max(self.interval, 1.0)
        #: name of a part whose restart failed -> when to try it again (monotonic)
        failing: dict[str, float] = {}
        while not self._stopping.wait(self.interval):
            for part in self.watched:
                if self._stopping.is_set():
                    return
                if part.alive():
                    failing.pop(part.name, None)
                    continue
                if time.monotonic() < failing.get(part.name, 0.0):
                    continue
                if part.name not in failing:
                    log.error("%s stopped; restarting it", part.name)
                try:
                    started = part.restart()
                    reason = "it did not start"
                except Exception as exc:  # noqa: BLE001 - retried until it starts
                    started, reason = False, str(exc)
                if started:
                    failing.pop(part.name, None)
                    log.warning("%s was restarted", part.name)
                else:
                    failing[part.name] = time.monotonic() + retry
                    log.error("%s did not restart (%s); retrying", part.name, reason)


class _ServerProcess:
    """A process beside the HTTP workers, ``python -m <module>`` (the DIMSE or the HL7
    listener, the background process), with the settings in the environment, listening
    on ``port`` (None: on no port)."""

    def __init__(self, module: str, host: str, port: int | None) -> None:
        self.module = module
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> bool:
        """Start it and wait until it accepts connections (a ready server is ready on
        both doors); False if it exits or does not listen in time."""
        if self.port is None:
            return self._start_unlistening(timeout)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def _start_unlistening(self, timeout: float) -> bool:
        """A process on no port says it is ready by writing to the pipe named by
        ``PICTOR_READY_FD`` (app.background: once connected to the index)."""
        import select

        from app.process import READY_VARIABLE

        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                pass_fds=(write_end,),
                env={**os.environ, READY_VARIABLE: str(write_end)},
            )
        finally:
            os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], timeout)
            if ready and os.read(read_end, 1):  # empty: it exited before saying so
                return True
        finally:
            os.close(read_end)
        self.stop()
        return False

    def alive(self) -> bool:
        """Running, or ended on purpose: SIGINT / SIGTERM end it with status 0 (Ctrl-C
        reaches it together with the supervisor); a crash or a kill does not."""
        return self.proc is None or self.proc.poll() in (None, 0)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
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
    report = Path(args.report) if args.report else None
    return run_import(settings, [Path(p) for p in args.paths], jobs=args.jobs, report=report)


def viewer_install(args: argparse.Namespace) -> int:
    """Fetch OHIF from the npm registry into the viewer directory (served at /viewer)."""
    from app.viewer import ViewerError, install

    settings = _settings(args)
    try:
        install(settings.viewer_path, args.version)
    except ViewerError as exc:
        sys.exit(f"pictor: {exc}")
    return 0


def _with_index(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(pool)`` on the archive's index (:func:`app.bootstrap.open_index`)."""
    import asyncio

    from app.bootstrap import open_index

    async def run() -> T:
        async with open_index(settings) as pool:
            return await work(pool)

    return asyncio.run(run())


def _new_password(args: argparse.Namespace, name: str) -> str:
    """The password from standard input (``--password-stdin``: its first line), else
    typed twice at the terminal."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        sys.exit("pictor: no terminal to ask for the password: pass --password-stdin")
    import getpass

    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        sys.exit("pictor: the two passwords differ; nothing was changed")
    return first


def user(args: argparse.Namespace) -> int:
    """``pictor user add|passwd|role|disable|enable|unlock|list``: people who sign in at
    ``/login`` (passwords hashed with argon2id)."""
    from app.auth.principal import ROLES
    from app.errors import PictorError
    from app.services import users

    settings = _settings(args)
    try:
        if args.action == "add":
            users.check_name(args.name)
            password = _new_password(args, args.name)
            _with_index(settings, lambda pool: users.add_user(pool, args.name, password, args.role))
            print(f"user {args.name!r} ({args.role}) added", file=sys.stderr)
        elif args.action == "passwd":
            password = _new_password(args, args.name)
            _with_index(settings, lambda pool: users.set_password(pool, args.name, password))
            print(f"password of {args.name!r} changed; their sessions ended", file=sys.stderr)
        elif args.action == "role":
            _with_index(settings, lambda pool: users.set_role(pool, args.name, args.role))
            print(f"{args.name!r} is now {args.role}", file=sys.stderr)
        elif args.action == "unlock":
            if (args.name is None) == (args.address is None):
                sys.exit("pictor: name an account or give --address, not both")
            found = _with_index(
                settings, lambda pool: users.unlock(pool, name=args.name, address=args.address)
            )
            what = repr(args.name) if args.name is not None else f"address {args.address}"
            print(
                f"{what}: "
                + ("failed sign-ins forgotten, unlocked" if found else "nothing to unlock"),
                file=sys.stderr,
            )
        elif args.action in ("disable", "enable"):
            disabled = args.action == "disable"
            _with_index(settings, lambda pool: users.set_disabled(pool, args.name, disabled))
            print(
                f"{args.name!r} {args.action}d" + ("; their sessions ended" if disabled else ""),
                file=sys.stderr,
            )
        else:
            rows = _with_index(settings, users.list_users)
            if args.json:
                import json

                print(
                    json.dumps(
                        [
                            {
                                "name": r.name,
                                "role": r.role,
                                "scopes": sorted(ROLES.get(r.role, ())),
                                "created": r.created_at.isoformat(),
                                "passwordChanged": r.password_changed_at.isoformat(),
                                "disabled": r.disabled_at.isoformat() if r.disabled_at else None,
                                "sessions": r.sessions,
                            }
                            for r in rows
                        ],
                        indent=1,
                    )
                )
            for r in [] if args.json else rows:
                state = f"disabled {r.disabled_at:%Y-%m-%d %H:%M}" if r.disabled_at else "active"
                print(
                    f"{r.name}\t{r.role}\t{r.created_at:%Y-%m-%d %H:%M}\t{state}\t"
                    f"{r.sessions} session(s)"
                )
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def webhook(args: argparse.Namespace) -> int:
    """``pictor webhook add|status|remove``: events pushed to HTTP receivers."""
    from app.errors import PictorError
    from app.services import webhooks

    settings = _settings(args)
    try:
        if args.action == "add":
            events = [e.strip() for e in args.events.split(",") if e.strip()]
            hook_id = _with_index(
                settings, lambda pool: webhooks.add(pool, args.url, events, args.secret)
            )
            print(hook_id)
            print(f"webhook {hook_id}: {args.url} for {', '.join(events)}", file=sys.stderr)
        elif args.action == "remove":
            _with_index(settings, lambda pool: webhooks.remove(pool, args.id))
            print(f"webhook {args.id} removed, with its pending deliveries", file=sys.stderr)
        else:
            rows = _with_index(settings, webhooks.status)
            if args.json:
                import json

                from app.dicomweb.admin import hook_answer

                print(json.dumps([hook_answer(r) for r in rows], indent=1))
                return 0
            for r in rows:
                last = f"{r.last_delivered_at:%Y-%m-%d %H:%M:%S}" if r.last_delivered_at else "-"
                print(
                    f"{r.hook.id}\t{r.hook.url}\t{','.join(r.hook.events)}\tpending {r.pending}"
                    f"\tdelivered {r.delivered}\tfailed {r.given_up}\tlast delivered {last}"
                    + (f"\tlast error: {r.last_error}" if r.last_error else "")
                )
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def route(args: argparse.Namespace) -> int:
    """``pictor route add|status|export|remove``: forwarding to other archives."""
    from app.errors import PictorError
    from app.services import routes

    settings = _settings(args)
    try:
        if args.action == "add":
            secret = None
            if args.token_file:
                source = sys.stdin if args.token_file == "-" else open(args.token_file)  # noqa: SIM115
                with source:
                    secret = source.readline().strip()
            made = _with_index(
                settings,
                lambda pool: routes.add(
                    pool, args.name, args.when, args.to, args.on, secret, args.deidentify
                ),
            )
            how = " (de-identified)" if made.deidentify is not None else ""
            print(f"route {made.name}: {made.trigger} -> {made.destination}{how}", file=sys.stderr)
        elif args.action == "remove":
            _with_index(settings, lambda pool: routes.remove(pool, args.name))
            print(f"route {args.name} removed, with its jobs", file=sys.stderr)
        elif args.action == "export":
            job = _with_index(settings, lambda pool: routes.export(pool, args.name, args.study))
            print(f"job {job}: study {args.study} on route {args.name}", file=sys.stderr)
        elif args.name:
            import json

            from app.dicomweb.admin import route_study_answer

            _, found = _with_index(settings, lambda pool: routes.studies(pool, args.name))
            if args.json:
                print(json.dumps([route_study_answer(s) for s in found], indent=1))
                return 0
            for st in found:
                print(
                    f"{st.study_uid}\t{st.state}\t{st.cause}\tsent {st.sent}"
                    f"\tattempts {st.attempts}\t{st.updated_at:%Y-%m-%d %H:%M:%S}"
                    + (f"\tlast error: {st.last_error}" if st.last_error else "")
                )
        else:
            import json

            from app.dicomweb.admin import route_answer

            rows = _with_index(settings, routes.status)
            if args.json:
                print(json.dumps([route_answer(r) for r in rows], indent=1))
                return 0
            for r in rows:
                when = " ".join(f"{c.keyword}={'|'.join(c.like)}" for c in r.route.conditions)
                print(
                    f"{r.route.name}\t{r.route.trigger}\t{r.route.destination}\t{when or '*'}"
                    f"\twaiting {r.waiting}\tdone {r.done}\tfailed {r.failed}\tsent {r.sent}"
                    + (f"\tlast error: {r.last_error}" if r.last_error else "")
                )
    except OSError as exc:
        sys.exit(f"pictor: {exc}")
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def token(args: argparse.Namespace) -> int:
    """``pictor token create|list|revoke``: API tokens (stored hashed; shown once)."""
    from app.auth.principal import parse_scopes
    from app.errors import PictorError
    from app.services import access

    settings = _settings(args)
    try:
        if args.action == "create":
            try:
                scopes = parse_scopes(args.scopes)
            except ValueError as exc:
                sys.exit(f"pictor: {exc}")
            secret = _with_index(
                settings, lambda pool: access.create_token(pool, args.name, scopes)
            )
            print(secret)
            print(
                f"token {args.name!r} ({','.join(scopes)}): shown only now; send it as "
                "'Authorization: Bearer <token>'",
                file=sys.stderr,
            )
        elif args.action == "list":
            rows = _with_index(settings, access.list_tokens)
            for r in rows:
                state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
                print(f"{r.name}\t{','.join(r.scopes)}\t{r.created_at:%Y-%m-%d %H:%M}\t{state}")
        else:
            _with_index(settings, lambda pool: access.revoke_token(pool, args.name))
            print(
                f"token {args.name!r} revoked (servers stop accepting it within "
                f"{settings.auth_cache_seconds:g} s)",
                file=sys.stderr,
            )
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def _cli_who() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _with_lifecycle(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(lifecycle)`` (:class:`app.services.lifecycle.Lifecycle`) on the index."""
    from app.bootstrap import open_store
    from app.services.lifecycle import Lifecycle

    return _with_index(settings, lambda pool: work(Lifecycle(settings, pool, open_store(settings))))


def _check_uids(*values: str | None) -> None:
    from app.dicom.uids import uid_problem

    for value in values:
        if value is not None and (problem := uid_problem(value)) is not None:
            sys.exit(f"pictor: {value!r}: the UID {problem}")


def trash(args: argparse.Namespace) -> int:
    """``pictor trash list|restore|empty``: deleted and rejected instances, kept for
    PICTOR_TRASH_DAYS (issue #15)."""
    from app.errors import PictorError
    from app.services.lifecycle import parse_age

    settings = _settings(args)
    who = _cli_who()
    try:
        if args.action == "list":
            rows = _with_lifecycle(settings, lambda lc: lc.list_trash())
            columns = "study", "patient id", "patient name", "series", "instances", "bytes"
            print("\t".join((*columns, "reason", "deleted", "expires")))
            for r in rows:
                print(
                    f"{r.study_uid}\t{r.patient_id or ''}\t{r.patient_name or ''}\t{r.series}\t"
                    f"{r.instances}\t{r.size_bytes}\t{','.join(r.reasons)}\t{r.deleted_at}\t"
                    f"{r.expires_at}"
                )
        elif args.action == "restore":
            _check_uids(args.study, *(args.series or []))
            out = _with_lifecycle(settings, lambda lc: lc.restore(args.study, args.series, who=who))
            print(f"restored {len(out.sop_uids)} instances of study {args.study}")
            if out.conflicts:
                print(
                    f"{len(out.conflicts)} left in the trash: their SOP Instance UIDs are "
                    "stored again (or their series is now in another study)",
                    file=sys.stderr,
                )
        else:
            age = parse_age(args.older_than) if args.older_than else None
            n = _with_lifecycle(settings, lambda lc: lc.empty(age, who=who))
            print(f"purged {n} instances from the trash")
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def tier(args: argparse.Namespace) -> int:
    """``pictor tier run|status|recall``: the storage tiers (issue #16)."""
    import json

    from app.bootstrap import open_store
    from app.errors import PictorError
    from app.services.tiering import Tiering, status

    settings = _settings(args)
    if args.action != "status" and not settings.cold_storage_url:
        sys.exit("pictor: no cold storage is configured (PICTOR_COLD_STORAGE_URL)")

    async def as_mover(pool: Any, work: Callable[[Tiering], Awaitable[T]]) -> T:
        tiering = Tiering(settings, pool, open_store(settings))
        async with tiering.mover() as mine:
            if not mine:
                sys.exit("pictor: a tier move is running (another node or process); try later")
            return await work(tiering)

    try:
        if args.action == "status":
            if args.study:
                _check_uids(args.study)
            found = _with_index(settings, lambda pool: status(pool, args.study))
            if args.json:
                print(json.dumps(found, indent=2))
                return 0
            for name, counts in found["tiers"].items():
                print(f"{name}\t{counts['instances']} instances\t{counts['bytes']} bytes")
            if "studies" in found:
                s = found["studies"]
                print(f"studies: {s['hot']} hot, {s['cold']} cold, {s['mixed']} in both")
        elif args.action == "run":
            report = _with_index(
                settings, lambda pool: as_mover(pool, lambda t: t.run(dry_run=args.dry_run))
            )
            for moved in report.studies:
                left = f"\t{moved.problems} left (see the log)" if moved.problems else ""
                print(f"{moved.study_uid}\t{moved.instances}\t{moved.bytes}{left}")
            verb = "would move" if report.dry_run else "moved"
            print(
                f"{verb} {len(report.studies)} studies ({report.instances} instances, "
                f"{report.bytes} bytes) to the cold tier",
                file=sys.stderr,
            )
        else:
            _check_uids(args.study)
            back = _with_index(
                settings, lambda pool: as_mover(pool, lambda t: t.recall(args.study))
            )
            print(f"recalled {back.instances} instances ({back.bytes} bytes) of {back.study_uid}")
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    return 0


def delete(args: argparse.Namespace) -> int:
    """``pictor delete STUDY_UID [--series UID [--instance UID]]``: into the trash."""
    from app.errors import PictorError

    settings = _settings(args)
    if args.instance and not args.series:
        sys.exit("pictor: --instance needs --series")
    _check_uids(args.study, args.series, args.instance)
    try:
        out = _with_lifecycle(
            settings,
            lambda lc: lc.delete(args.study, args.series, args.instance, who=_cli_who()),
        )
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    days = settings.trash_days
    kept = f"kept in the trash for {days:g} days" if days else "purged"
    print(f"deleted {len(out.sop_uids)} instances ({kept})")
    return 0


def update(args: argparse.Namespace) -> int:
    """``pictor update STUDY_UID --set PatientName=DOE^JANE [--set ...]`` or ``--undo``:
    correct patient and study attributes (the stored files are not rewritten)."""
    import json

    from app.errors import PictorError

    settings = _settings(args)
    _check_uids(args.study)
    who = _cli_who()
    if bool(args.set) == bool(args.undo):
        sys.exit("pictor: give --set KEYWORD=VALUE (one or more) or --undo")
    try:
        if args.undo:
            done = _with_lifecycle(settings, lambda lc: lc.undo(args.study, who=who))
        else:
            body = _settings_patch(args.set)
            done = _with_lifecycle(settings, lambda lc: lc.update(args.study, body, who=who))
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    print(json.dumps({"study": done.study_uid, "old": done.old, "new": done.new}, indent=1))
    print(f"{done.instances} instances now carry the new values", file=sys.stderr)
    return 0


def _settings_patch(assignments: list[str]) -> dict[str, Any]:
    """``KEYWORD=VALUE`` (or ``GGGGEEEE=VALUE``) -> a DICOM JSON object (PS3.18 F.2);
    an empty value empties the attribute, backslashes separate values (PS3.5 6.4)."""
    from pydicom.datadict import dictionary_VR

    from app.dicom.patch import PatchError, tag_of

    body: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"pictor: --set {item!r}: expected KEYWORD=VALUE")
        try:
            tag = tag_of(key.strip())
            vr = dictionary_VR(tag)
        except (PatchError, KeyError) as exc:
            sys.exit(f"pictor: --set {item!r}: {exc}")
        values: list[Any] = value.split("\\") if value else []
        if vr == "PN":
            values = [{"Alphabetic": v} for v in values]
        body[f"{tag:08X}"] = {"vr": vr, **({"Value": values} if values else {})}
    return body


def _errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """A backup's or a restore's errors to report in one line: ``more``, the file
    system's, the tools', and the S3 client's (imported only when an error is being
    handled)."""
    from app.storage.targets import client_errors

    return (*more, OSError, RuntimeError, *client_errors())


def backup(args: argparse.Namespace) -> int:
    """``pictor backup DEST``: the index at one point in time and the files it
    references, into the directory DEST (only the files it lacks); while serving."""
    import asyncio

    import msgspec

    from app.bootstrap import open_database, open_store
    from app.services.backup import backup as run_backup
    from app.services.backup import backups
    from app.storage.targets import open_target

    settings = _settings(args)
    try:
        dest = open_target(args.dest, settings.s3_endpoint_url)
    except ValueError as exc:
        sys.exit(f"pictor backup: {exc}")
    if args.list:
        for name in backups(dest):
            print(name)
        return 0

    async def run() -> Any:
        async with open_database(settings) as (dsn, pool):
            with_dsn = msgspec.structs.replace(settings, database_url=dsn)
            return await run_backup(with_dsn, pool, open_store(settings), dest)

    try:
        report = asyncio.run(run())
    except _errors() as exc:
        sys.exit(f"pictor backup: {exc}")
    print(
        f"backup {report.name} in {dest.describe()}: {report.files} files, {report.copied} copied "
        f"({report.bytes_copied} bytes), {report.files - report.copied} already there"
    )
    for key in report.corrupt:
        print(f"DAMAGED in the storage (SHA-256 differs from the one at ingest): {key}")
    return 1 if report.corrupt else 0


def restore(args: argparse.Namespace) -> int:
    """``pictor restore SRC --data-dir NEW``: a backup onto an empty data directory."""
    import asyncio
    import atexit

    from app.bootstrap import open_database, open_index, open_store
    from app.services.backup import (
        BackupError,
        check_empty,
        choose,
        files_restored_hot,
        restore_files,
        restore_index,
    )
    from app.storage.targets import open_target

    settings = _settings(args)
    try:
        src = open_target(args.src, settings.s3_endpoint_url)
    except ValueError as exc:
        sys.exit(f"pictor restore: {exc}")
    failed: list[bool] = []
    if not settings.data_dir.exists():
        # nothing half-restored is left; at exit, after the embedded PostgreSQL's own
        # clean-up (registered later, run earlier), which touches the directory
        def remove_if_failed() -> None:
            if failed:
                shutil.rmtree(settings.data_dir, ignore_errors=True)

        atexit.register(remove_if_failed)

    async def run() -> Any:
        check_empty(settings.data_dir)
        name, manifest = choose(src, args.at)
        async with open_database(settings, migrate=False) as (dsn, pool):
            await restore_index(pool, dsn, src, name)
        report = await restore_files(settings, open_store(settings), src, name, manifest)
        async with open_index(settings) as pool:  # newer migrations, if the backup is older
            await files_restored_hot(pool)
        return report

    try:
        report = asyncio.run(run())
    except _errors(BackupError) as exc:
        failed.append(True)
        sys.exit(f"pictor restore: {exc}")
    print(
        f"restored backup {report.name} into {settings.data_dir}: {report.files} files, "
        f"{report.bytes} bytes"
    )
    return 0


def verify(args: argparse.Namespace) -> int:
    """``pictor verify [--study UID] [--repair-from BACKUP]``: check every stored file
    against the size and SHA-256 recorded at ingest; exit status 1 while any is bad."""
    from app.bootstrap import open_store
    from app.services import fixity

    settings = _settings(args)
    _check_uids(args.study)
    store = open_store(settings)

    async def run(pool: Any) -> tuple[Any, list[str], list[str]]:
        repaired: list[str] = []
        left: list[str] = []
        if args.repair_from:
            backup = Path(args.repair_from).expanduser().resolve()
            if not (backup / "files").is_dir():
                sys.exit(f"pictor verify: {backup} is not a backup directory (no files/)")
            await fixity.verify(pool, store, args.study)  # what is wrong now
            repaired, left = await fixity.repair(pool, store, backup)
        return await fixity.verify(pool, store, args.study), repaired, left

    report, repaired, left = _with_index(settings, run)
    for key in repaired:
        print(f"repaired from the backup: {key}")
    for key in left:
        print(f"not in the backup (or damaged there too): {key}")
    for key, sop, problem in report.problems:
        print(f"{problem.upper()}: {key} (SOP Instance UID {sop})")
    print(
        f"checked {report.checked} files ({report.bytes} bytes): "
        f"{len(report.problems)} missing or changed"
    )
    return 1 if report.problems else 0


def link(args: argparse.Namespace) -> int:
    """``pictor link STUDY_UID --ttl 1h``: a signed URL that opens the study in the viewer
    and grants read access to that study only, until it expires."""
    from app.auth import links
    from app.dicom.uids import uid_problem

    settings = _settings(args)
    if (problem := uid_problem(args.study)) is not None:
        sys.exit(f"pictor: the study UID {problem}")
    import asyncio

    from app.bootstrap import open_index
    from app.errors import PictorError

    async def secret() -> bytes:
        async with open_index(settings) as pool:
            return await links.load_secret(settings, pool)

    try:
        ttl = links.parse_ttl(args.ttl)
        token, expires = links.sign(asyncio.run(secret()), args.study, ttl)
    except links.LinkError as exc:
        sys.exit(f"pictor: {exc}")
    except PictorError as exc:
        sys.exit(f"pictor: {exc.message}")
    root = args.base_url or settings.public_base_url.removesuffix("/dicom-web")
    if not root:
        scheme = "https" if settings.tls_cert else "http"
        root = f"{scheme}://{settings.host}:{settings.port}"
    print(f"{root.rstrip('/')}/link/{token}")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    print(f"opens study {args.study} in the viewer until {when}", file=sys.stderr)
    return 0


def _moment(text: str | None) -> Any:
    import datetime as dt

    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        sys.exit(f"pictor: {text!r} is not an ISO 8601 date or date-time")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def audit(args: argparse.Namespace) -> int:
    """``pictor audit``: the audit trail, as text or FHIR AuditEvent JSON (IHE BALP)."""
    import json

    from app.auth.fhir import bundle
    from app.services import access

    settings = _settings(args)
    rows = _with_index(
        settings,
        lambda pool: access.audit_events(
            pool,
            patient=args.patient,
            study=args.study,
            user=args.user,
            since=_moment(args.since),
            until=_moment(args.until),
            limit=args.limit,
        ),
    )
    if args.fhir:
        json.dump(bundle(rows), sys.stdout, indent=1)
        print()
        return 0
    for r in rows:
        uids = ",".join(r["study_uids"]) or "-"
        print(
            f"{r['at']:%Y-%m-%dT%H:%M:%S.%f%z}  {r['who']}  {r['client'] or '-'}  {r['action']}"
            f"  {r['outcome']}  {r['status']}  {uids}"
        )
    return 0


def _version_text() -> str:
    """``pictor X.Y.Z (index schema N)``: what an upgrade is checked against."""
    from app import __version__
    from app.bootstrap import schema_version

    return f"pictor {__version__} (index schema {schema_version()})"


def health(args: argparse.Namespace) -> int:
    """``pictor health``: ask the server on this machine (its settings: port, TLS) for
    ``/health``; exit status 0 when it serves (``ok`` or ``degraded``), 1 otherwise.
    The Docker image's HEALTHCHECK, and a probe for scripts."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    settings = _settings(args)
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    url = f"{scheme}://{host}:{settings.port}/health"
    # the server's own certificate names its public host, not this loopback address
    context = ssl._create_unverified_context() if settings.tls_cert else None
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace')[:300]}")
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
        return 1
    print(f"{url}: {body.get('status')}" + "".join(f"; {p}" for p in body.get("problems", [])))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pictor", description="Pictor imaging archive")
    parser.add_argument("--version", action="version", version=_version_text())
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
        "--hl7-port",
        type=int,
        help="HL7 v2 MLLP port for ADT and orders (env PICTOR_HL7_PORT; default 2575; 0 off)",
    )
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
    s.add_argument(
        "--auth",
        action="store_true",
        help="require bearer tokens (API tokens, OIDC JWTs, study links) (env PICTOR_AUTH)",
    )
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without --auth (env PICTOR_INSECURE_NO_AUTH)",
    )
    s.add_argument("--tls-cert", help="HTTPS certificate chain, PEM (env PICTOR_TLS_CERT)")
    s.add_argument("--tls-key", help="HTTPS private key, PEM (env PICTOR_TLS_KEY)")
    common(s)
    s.set_defaults(func=serve)

    i = sub.add_parser("import", help="import DICOM files and folders into the archive")
    i.add_argument("paths", nargs="+", help="files, folders (searched recursively) and ZIP files")
    i.add_argument("--report", help="write every file's outcome to this file (tab-separated)")
    i.add_argument(
        "--jobs", type=int, default=0, help="files analysed at once (default: 2 per core)"
    )
    common(i)
    i.set_defaults(func=import_)

    h = sub.add_parser("health", help="ask the local server for /health (exit 0 if serving)")
    h.add_argument("--host", help="the server's bind address (env PICTOR_HOST)")
    h.add_argument("--port", type=int, help="its HTTP port (env PICTOR_PORT; default 8042)")
    h.add_argument("--timeout", type=float, default=5, help="seconds (default 5)")
    common(h)
    h.set_defaults(func=health)
    vf = sub.add_parser(
        "verify", help="check the stored files against the SHA-256 recorded at ingest"
    )
    vf.add_argument("--study", help="only this study (its Study Instance UID)")
    vf.add_argument(
        "--repair-from", help="put back damaged or missing files from this backup directory"
    )
    common(vf)
    vf.set_defaults(func=verify)
    b = sub.add_parser(
        "backup", help="back the archive up into a directory (incremental; while serving)"
    )
    b.add_argument("dest", help="the backup directory (created if needed)")
    b.add_argument("--list", action="store_true", help="list the backups in DEST")
    common(b)
    b.set_defaults(func=backup)
    r = sub.add_parser("restore", help="restore a backup onto an empty data directory")
    r.add_argument("src", help="the backup directory")
    r.add_argument("--at", help="the backup to restore (its name or a prefix; default latest)")
    common(r)
    r.set_defaults(func=restore)

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

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", help="data directory (env PICTOR_DATA_DIR; default ./pictor-data)"
        )

    t = sub.add_parser("token", help="API tokens for DICOMweb clients (stored hashed)")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create", help="make a token; it is printed once")
    tc.add_argument("--name", required=True, help="who or what the token is for")
    tc.add_argument(
        "--scopes",
        default="read",
        help="read, write, delete, admin (comma list; read; admin includes delete)",
    )
    data_dir(tc)
    tl = tsub.add_parser("list", help="the tokens (names, scopes, state; never secrets)")
    data_dir(tl)
    tr = tsub.add_parser("revoke", help="revoke a token")
    tr.add_argument("name")
    data_dir(tr)
    t.set_defaults(func=token)

    wh = sub.add_parser("webhook", help="events pushed to HTTP receivers (CloudEvents, signed)")
    wsub = wh.add_subparsers(dest="action", required=True)
    wa = wsub.add_parser("add", help="subscribe a receiver")
    wa.add_argument("--url", required=True, help="http(s)://host/path the events are POSTed to")
    wa.add_argument(
        "--events",
        required=True,
        help="instance.created, study.stable, study.updated, study.deleted (comma list)",
    )
    wa.add_argument("--secret", help="signs each delivery (X-Pictor-Signature: sha256=HMAC)")
    ws = wsub.add_parser("status", help="the webhooks: pending, delivered, failed, last error")
    ws.add_argument("--json", action="store_true", help="as JSON")
    wr = wsub.add_parser("remove", help="unsubscribe (pending deliveries are dropped)")
    wr.add_argument("id", type=int)
    for p in (wa, ws, wr):
        data_dir(p)
    wh.set_defaults(func=webhook)

    ro = sub.add_parser("route", help="forward studies to other archives (DICOMweb, DIMSE)")
    rsub = ro.add_subparsers(dest="action", required=True)
    ra = rsub.add_parser("add", help="a rule: which instances go where, and when")
    ra.add_argument("name", help="1 to 64 letters, digits, '.', '_' or '-'")
    ra.add_argument(
        "--when",
        action="append",
        default=[],
        help="Keyword=value[,value...] (* and ? wildcards); repeat: all must hold",
    )
    ra.add_argument(
        "--to", required=True, help="dicomweb:https://host/dicom-web or dimse:AET@host:port"
    )
    ra.add_argument("--on", default="study.stable", choices=["study.stable", "instance.created"])
    ra.add_argument(
        "--token-file", help="a bearer token for a DICOMweb destination, from a file (- stdin)"
    )
    ra.add_argument(
        "--deidentify",
        metavar="basic[,retain-dates][,clean-descriptors]",
        help="send de-identified (PS3.15 Annex E Basic Profile, with those options)",
    )
    rs = rsub.add_parser("status", help="the routes, or with a name its studies")
    rs.add_argument("name", nargs="?")
    rs.add_argument("--json", action="store_true", help="as JSON")
    rx = rsub.add_parser("export", help="send one study on a route again, now")
    rx.add_argument("name")
    rx.add_argument("study", help="Study Instance UID")
    rr = rsub.add_parser("remove", help="remove a route, its jobs and its record of what was sent")
    rr.add_argument("name")
    for p in (ra, rs, rx, rr):
        data_dir(p)
    ro.set_defaults(func=route)

    us = sub.add_parser("user", help="people who sign in at /login (passwords hashed, argon2id)")
    usub = us.add_subparsers(dest="action", required=True)
    roles = "viewer (read), technologist (read, write), radiologist (read, worklist), admin"
    ua = usub.add_parser("add", help="add an account")
    ua.add_argument("name", help="1 to 64 letters, digits, '.', '_', '@', '-'")
    ua.add_argument("--role", required=True, help=roles)
    up = usub.add_parser("passwd", help="set a new password (ends the account's sessions)")
    up.add_argument("name")
    for p in (ua, up):
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from standard input's first line (else: asked twice)",
        )
    ur = usub.add_parser("role", help="give an account another role")
    ur.add_argument("name")
    ur.add_argument("role", help=roles)
    ud = usub.add_parser("disable", help="refuse its sign-ins and end its sessions")
    ud.add_argument("name")
    ue = usub.add_parser("enable", help="allow a disabled account to sign in again")
    ue.add_argument("name")
    uu = usub.add_parser("unlock", help="lift the lock that failed sign-ins put on an account")
    uu.add_argument("name", nargs="?")
    uu.add_argument("--address", help="lift the lock of a client address instead")
    ul = usub.add_parser("list", help="the accounts (names, roles, state; never passwords)")
    ul.add_argument("--json", action="store_true", help="as JSON")
    for p in (ua, up, ur, ud, ue, uu, ul):
        data_dir(p)
    us.set_defaults(func=user)

    lk = sub.add_parser("link", help="a signed, expiring URL opening one study in the viewer")
    lk.add_argument("study", help="Study Instance UID")
    lk.add_argument("--ttl", default="1h", help="lifetime: 30m, 1h, 7d, ... (default 1h)")
    lk.add_argument(
        "--base-url",
        help="the server's public root URL (default: PICTOR_PUBLIC_BASE_URL, else host:port)",
    )
    data_dir(lk)
    lk.set_defaults(func=link)

    tr_ = sub.add_parser("trash", help="deleted and rejected instances (restorable until purged)")
    trsub = tr_.add_subparsers(dest="action", required=True)
    trl = trsub.add_parser("list", help="studies with instances in the trash")
    data_dir(trl)
    trr = trsub.add_parser("restore", help="bring a study's trashed instances back")
    trr.add_argument("study", help="Study Instance UID")
    trr.add_argument("--series", action="append", help="only this series (repeatable)")
    data_dir(trr)
    tre = trsub.add_parser("empty", help="purge the trash (files and rows)")
    tre.add_argument("--older-than", help="only what was deleted this long ago: 3d, 12h, 30m")
    data_dir(tre)
    tr_.set_defaults(func=trash)

    ti = sub.add_parser("tier", help="storage tiers: move idle studies to cold, say where")
    tisub = ti.add_subparsers(dest="action", required=True)
    tir = tisub.add_parser("run", help="move the idle studies to the cold storage now")
    tir.add_argument("--dry-run", action="store_true", help="only list what would move")
    data_dir(tir)
    tis = tisub.add_parser("status", help="instances and bytes per tier")
    tis.add_argument("--study", help="one study's tiers")
    tis.add_argument("--json", action="store_true")
    data_dir(tis)
    tic = tisub.add_parser("recall", help="bring a study back to the hot storage")
    tic.add_argument("study", help="Study Instance UID")
    data_dir(tic)
    ti.set_defaults(func=tier)

    d = sub.add_parser("delete", help="delete a study, series or instance (into the trash)")
    d.add_argument("study", help="Study Instance UID")
    d.add_argument("--series", help="Series Instance UID")
    d.add_argument("--instance", help="SOP Instance UID (with --series)")
    data_dir(d)
    d.set_defaults(func=delete)

    u = sub.add_parser("update", help="correct a study's patient and study attributes")
    u.add_argument("study", help="Study Instance UID")
    u.add_argument(
        "--set",
        action="append",
        metavar="KEYWORD=VALUE",
        help="PatientName=DOE^JANE, PatientID=123, ... (repeatable; empty value: empty)",
    )
    u.add_argument("--undo", action="store_true", help="undo the latest correction")
    data_dir(u)
    u.set_defaults(func=update)

    a = sub.add_parser("audit", help="query the audit trail (who accessed what)")
    a.add_argument("--patient", help="Patient ID of the studies touched")
    a.add_argument("--study", help="Study Instance UID")
    a.add_argument("--user", help="token:NAME, jwt:SUBJECT, link:STUDY, aet:AE_TITLE, ...")
    a.add_argument("--since", help="from this ISO 8601 date or date-time (UTC unless given)")
    a.add_argument("--until", help="before this ISO 8601 date or date-time")
    a.add_argument("--limit", type=int, default=10000, help="at most this many (10000)")
    a.add_argument("--fhir", action="store_true", help="FHIR R4 AuditEvent Bundle (JSON)")
    data_dir(a)
    a.set_defaults(func=audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
