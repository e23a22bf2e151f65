"""Connecting to PostgreSQL: the embedded private server or ``DATABASE_URL``, plus migrations.

With no ``DATABASE_URL`` Pictor runs its own PostgreSQL under ``<data-dir>/pg`` through
the ``pgserver`` package (a real PostgreSQL shipped in a wheel), listening only on a
Unix socket. If a postmaster from an earlier run is still alive on that directory (the
previous process was killed), it is reattached. :meth:`EmbeddedPostgres.stop` shuts it
down with ``pg_ctl stop``: pgserver's own clean-up does not stop a reattached server.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg

from app.errors import BadRequest, PictorError, ServiceUnavailable

log = logging.getLogger(__name__)


#: the connection pool the services hold (an asyncpg pool; only this package imports
#: asyncpg)
Pool: TypeAlias = asyncpg.Pool

#: what asyncpg raises when the database or the connection to it fails
INDEX_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # a query on a connection the server dropped mid-way ("cannot switch to state ...")
    asyncpg.InternalClientError,
)


def index_failure(what: str, exc: BaseException, *, client_values: bool = True) -> PictorError:
    """The domain error for a failed index call (DESIGN.md decision 12).

    A value the database cannot take (SQLSTATE class 22, "data exception", or one the
    driver cannot encode) came from the request when ``client_values``: 400. Anything
    else: 503 that says only ``what`` could not be done; the cause (which may name
    tables, paths or hosts) goes to the log, never to the client."""
    data_error = isinstance(exc, (asyncpg.DataError, asyncpg.exceptions._base.DataError))
    if client_values and data_error:
        log.info("%s: a value was refused by the database: %s", what, exc)
        return BadRequest(f"{what}: a value in the request cannot be compared with the index")
    log.error("%s: %s: %s", what, type(exc).__name__, exc)
    return ServiceUnavailable(f"{what}; try again later")


_MIGRATION = re.compile(r"^(\d{3,})_[\w-]+\.sql$")
_MIGRATION_LOCK = 0x5049_4354  # advisory lock key: several nodes may start at once


def schema_dir() -> Path:
    """``schemas/`` of the source tree, or the copy installed with the package."""
    candidates = [
        Path(__file__).resolve().parents[2] / "schemas",
        Path(sys.prefix) / "share" / "pictor" / "schemas",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("cannot find the schemas/ directory with Pictor's SQL migrations")


def migrations(directory: Path | None = None) -> list[tuple[int, Path]]:
    found = []
    for path in (directory or schema_dir()).iterdir():
        m = _MIGRATION.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    found.sort()
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply pending migrations in order, each in its own transaction. Returns those applied."""
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        for version, path in migrations(directory):
            if version in done:
                continue
            log.info("applying migration %s", path.name)
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
            applied.append(version)
        if directory is None:
            from app.index import fragments  # the compiler's SQL, kept out of import time

            await fragments.install(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def json_codecs(conn: asyncpg.Connection) -> None:
    """json and jsonb travel as bytes: stored and sent as they are, never re-parsed."""
    await conn.set_type_codec(
        "json", encoder=lambda b: b, decoder=lambda b: b, schema="pg_catalog", format="binary"
    )
    # jsonb's binary form is a version byte (1) and the JSON text
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda b: b"\x01" + b,
        decoder=lambda b: b[1:],
        schema="pg_catalog",
        format="binary",
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    await json_codecs(conn)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """On release to the pool: end a transaction left open, nothing else. asyncpg's
    default reset sends ``RESET ALL; CLOSE ALL; UNLISTEN *; ...``: a round trip per
    query for state this code never leaves behind (session-level advisory locks are
    taken only by the migrations, which unlock them)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    on_connect: Callable[[asyncpg.Connection], Any] | None = None,
    application_name: str | None = None,
) -> asyncpg.Pool:
    """A pool of connections to the index; ``on_connect(conn)`` (a coroutine function)
    runs once on each new connection after the codecs are set; ``application_name``
    names the sessions in ``pg_stat_activity``."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if on_connect is not None:
            await on_connect(conn)

    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init,
            reset=_reset_connection,
            server_settings={"application_name": application_name} if application_name else None,
            command_timeout=60,
        )
    except (*INDEX_ERRORS, ValueError, OverflowError) as exc:  # also: a malformed URL
        raise index_failure("cannot connect to the index", exc, client_values=False) from exc
    assert pool is not None
    return pool


class EmbeddedPostgres:
    """A private PostgreSQL server under ``directory`` (through ``pgserver``).

    Several processes may use it at once (``pictor serve`` and a ``pictor import`` or
    ``token`` beside it): each holds a shared ``flock`` on ``<directory>.users`` while it
    uses the server, and :meth:`stop` stops it only when it can take that lock
    exclusively, that is when no other process uses it (issue #19: a second process
    stopped the first one's database on exit). A server left running by a process that
    was killed is reattached, and stopped by the last user.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: Any = None
        self._users_fd: int | None = None
        #: True when a postmaster was already running on the directory (a server that is
        #: running, or one that was killed): it is reused rather than started
        self.reattached = False

    def start(self) -> str:
        """Start (or reattach to) the server; returns its connection URI."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # pgserver keeps its lock file in the user runtime directory, read at import
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.directory.parent / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        import pgserver  # imported here: only the embedded mode needs it

        if self._users_fd is None:
            users = self.directory.with_name(self.directory.name + ".users")
            self._users_fd = os.open(users, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._users_fd, fcntl.LOCK_SH)  # waits while a last user stops it
        self.reattached = _postmaster_alive(self.directory)
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.directory, cleanup_mode=None
        )
        self._server.ensure_postgres_running()  # pgserver's cached instance may be stopped
        uri: str = self._server.get_uri()
        return uri

    def restart(self) -> bool:
        """Start the server again after its postmaster died (same directory, same URI);
        whether it runs now. Not yet while the dead postmaster is a zombie its parent has
        not reaped: PostgreSQL itself refuses to start while that PID exists."""
        assert self._server is not None, "restart() of a server never started"
        # as a start does: run as root, pgserver's system user must be able to reach
        # the directory, and something (a tool that tightens /tmp's folders) may have
        # taken that away since (CI once saw pg_ctl refused, "Permission denied")
        self._server.ensure_pgdata_inited()
        self._server.ensure_postgres_running()
        return self.running

    @property
    def running(self) -> bool:
        """Whether the postmaster of the directory is alive."""
        return _postmaster_alive(self.directory)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended, data is flushed),
        unless another process still uses it."""
        fd, self._users_fd = self._users_fd, None
        try:
            if self._server is None:
                return
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # still used by another process: the last one stops it
            from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # bundled

            try:
                pg_ctl(
                    ["-w", "-m", "fast", "stop"],
                    pgdata=self.directory,
                    user=self._server.system_user,
                )
            except subprocess.CalledProcessError:
                pass  # already stopped
        finally:
            self._server = None
            if fd is not None:
                os.close(fd)


def _postmaster_alive(directory: Path) -> bool:
    try:
        pid = int((directory / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    try:  # a killed postmaster nobody has reaped yet is a zombie: dead
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


async def ping(pool: Pool) -> None:
    """Raises unless the index answers a query (a readiness probe)."""
    await pool.fetchval("SELECT 1")


#: the ``application_name`` of the background process's sessions (app.background)
BACKGROUND_APPLICATION = "pictor-background"


async def background_sessions(pool: Pool) -> int:
    """The database sessions of background processes (``pg_stat_activity``): none means
    that no background process of the archive is connected."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        BACKGROUND_APPLICATION,
    )
    return count


class Listener:
    """A connection of ``pool`` held to LISTEN on ``channel``; ``callback`` gets each
    notification's payload (PostgreSQL NOTIFY: delivered at the sender's commit).

    When the connection is lost (the database restarted, say), notifications sent
    meanwhile are lost with it: ``on_gap`` is called then and again once listening
    resumes, and the listener reconnects in the background until it does."""

    def __init__(
        self,
        pool: Pool,
        channel: str,
        callback: Callable[[str], None],
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.channel = channel
        self.callback = callback
        self.on_gap = on_gap
        self._conn: Any = None
        self._stopped = False
        self._reconnecting: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether notifications are being heard now (not between a loss and a reconnect)."""
        return self._conn is not None

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.callback(str(payload))

    async def start(self) -> None:
        """Listen; when the index does not answer now, keep trying in the background."""
        try:
            await self._listen()
        except INDEX_ERRORS:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect(None))

    async def _listen(self) -> None:
        conn = await self.pool.acquire()
        try:
            await conn.add_listener(self.channel, self._deliver)
        except BaseException:
            await self.pool.release(conn)
            raise
        conn.add_termination_listener(self._lost)
        self._conn = conn

    def _lost(self, conn: Any) -> None:
        if self._stopped or conn is not self._conn:
            return
        self._conn = None
        log.warning("the index connection listening for %s was lost; reconnecting", self.channel)
        if self.on_gap is not None:
            self.on_gap()
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect(conn))

    async def _reconnect(self, lost: Any) -> None:
        if lost is not None:
            try:
                await self.pool.release(lost)
            except INDEX_ERRORS:
                pass
        delay = 0.2
        while not self._stopped:
            try:
                await self._listen()
            except INDEX_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.on_gap is not None:
                self.on_gap()  # what was announced before start() returned is missed
            log.warning("listening for %s again", self.channel)
            return

    async def stop(self) -> None:
        self._stopped = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.remove_termination_listener(self._lost)
            await conn.remove_listener(self.channel, self._deliver)
        except INDEX_ERRORS:
            pass
        await self.pool.release(conn)
