"""Typed settings, read once.

This is the only module that reads the environment. Every other module receives a
:class:`Settings` value; settings are frozen so nothing changes them after start-up.

Precedence: command-line flag > environment variable > default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

DuplicatePolicy = Literal["reject", "replace"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8042
    data_dir: Path = Path("pictor-data")
    dimse_port: int = 11112
    dimse_ae_title: str = "PICTOR"
    #: Known DIMSE peers, ``AET@host:port`` or ``AET@network`` separated by commas: the
    #: C-MOVE destinations (those with a port), and, when ``dimse_restrict`` or ``auth``
    #: is on, the only calling AE titles accepted, each from its host or network only.
    dimse_peers: str = ""
    #: Accept associations only from the AE titles in ``dimse_peers`` (PS3.8 A-ASSOCIATE-RJ
    #: reason "calling AE title not recognized" otherwise). Off for a first run.
    dimse_restrict: bool = False
    #: HL7 v2 over MLLP (issue #18): ADT and orders from the RIS/HIS; 0 turns it off
    hl7_port: int = 2575
    #: the source addresses (hosts or networks, comma separated) HL7 is accepted from;
    #: with access control on (``auth``) only these, and then at least one is needed
    hl7_peers: str = ""
    #: Origins allowed to read responses in a browser (Fetch standard CORS), comma
    #: separated; ``*`` only when asked for. Empty: no other origin.
    cors_origins: str = ""
    #: Where ``pictor viewer install`` puts the OHIF bundle that ``/viewer`` serves;
    #: empty means ``<data_dir>/viewer``.
    viewer_dir: str = ""
    #: ``postgresql://...``; empty means "run a private PostgreSQL under data_dir".
    database_url: str = ""
    #: Base URL written into RetrieveURL / BulkDataURI, e.g. ``https://pacs.example.org/dicom-web``.
    public_base_url: str = ""
    #: What STOW / import do with a *different* object under an existing SOP Instance UID.
    on_duplicate: DuplicatePolicy = "reject"
    #: days a deleted or rejected instance stays in the trash, restorable, before the
    #: purge removes its file and rows; 0 deletes at once
    trash_days: float = 7.0
    #: bytes that must stay free on the storage's file system: below it, new data are
    #: refused (507 over STOW, A700 over C-STORE) before the disk fills up and takes the
    #: database with it; reads, deletes and the purge go on
    min_free_bytes: int = 1 << 30
    #: where stored instances live: ``file:///path`` (empty: ``<data_dir>/storage``) or
    #: ``s3://bucket[/prefix]`` (an S3-compatible bucket; see ``s3_endpoint_url``). All
    #: nodes of one archive use the same URL
    storage_url: str = ""
    #: a second, cheaper storage (same URL forms): studies nobody has read for
    #: ``tier_after_days`` move there; reads from it are transparent. Empty: one tier
    cold_storage_url: str = ""
    #: days without a read (or a new instance) after which a study moves to cold
    tier_after_days: float = 30.0
    #: never move a study received less than this many days ago
    tier_min_age_days: float = 30.0
    #: a read of a study in the cold tier brings it back to hot (in the background)
    tier_recall: bool = False
    #: bytes a second a tier move copies (one mover in the whole archive)
    tier_rate: int = 32 << 20
    #: seconds between runs of the background tier move (0: only ``pictor tier run``)
    tier_interval: float = 3600.0
    #: the S3 API endpoint of an S3-compatible store (MinIO, Ceph, Garage, ...); empty:
    #: AWS. Credentials and region: the standard AWS_* variables
    s3_endpoint_url: str = ""
    #: bytes a second the background fixity scrub reads (one process of the archive
    #: scrubs; 0 turns it off): 16 MiB/s goes round 1.3 TB a day
    scrub_rate: int = 16 << 20
    #: seconds between runs of the background purge of expired trash
    purge_interval: float = 600.0
    #: the niceness (0-19) of ``pictor serve``'s background process (webhook and route
    #: deliveries, tier moves, the fixity scrub) and of its database sessions where the
    #: database runs on this machine: work that can wait yields the cores to ingest
    background_nice: int = 10
    #: set by ``pictor serve`` for its children: a background process of its own does
    #: the deliveries, moves and scrubs, so the HTTP and DIMSE processes do not
    background_process: bool = False
    #: HTTP server processes (unset: two per core, at most 8; 1 to 64 when given). All
    #: share the index and the storage. Two per core keep both cores busy when a few
    #: long-lived connections (a modality's STOW client) land unevenly on the processes.
    workers: int = 0
    log_level: str = "info"
    #: ``text`` for people, ``json`` (one object per line) for log collectors
    log_format: Literal["text", "json"] = "text"
    #: one log line per HTTP request (logger ``pictor.access``: method, path, status,
    #: duration, client)
    access_log: bool = False
    # -- access control and audit (issue #8; see app/auth) --
    #: require a bearer token (API token, OIDC JWT or study link) on every route but
    #: /health, the viewer's static files and CORS preflights
    auth: bool = False
    #: allow listening on a non-loopback address without ``auth`` (logged loudly)
    insecure_no_auth: bool = False
    #: record accesses in the audit trail even without ``auth`` (with it: always)
    audit: bool = False
    #: OIDC / JWT access tokens (RFC 7519): expected ``iss`` and ``aud`` claims
    oidc_issuer: str = ""
    oidc_audience: str = ""
    #: where the issuer's signing keys are published (a JWK Set, RFC 7517) ...
    oidc_jwks_url: str = ""
    #: ... or a PEM file with the one public key that signs the tokens
    oidc_public_key: str = ""
    #: accepted JWS algorithms, comma separated; never ``none`` nor HMAC (HS*)
    oidc_algorithms: str = "RS256,RS384,RS512,PS256,ES256,ES384,EdDSA"
    #: the claim holding the granted scopes (space-separated string or list); ``scp``
    #: is read too when this one is absent
    oidc_scope_claim: str = "scope"
    #: an optional claim with roles (a list, or a dotted path such as
    #: ``realm_access.roles``); roles named read / write / admin grant those scopes
    oidc_roles_claim: str = ""
    #: fewest seconds between two fetches of the JWK Set caused by unknown key ids (a
    #: flood of made-up ``kid`` values must not become a flood of requests to the issuer)
    oidc_jwks_cooldown: float = 10.0
    #: people sign in at the identity provider (issue #21): the viewer's client id there
    #: (a public client: authorization code with PKCE, run by OHIF in the browser); the
    #: provider is ``oidc_issuer`` (its discovery document, OpenID Connect Discovery 1.0)
    oidc_client_id: str = ""
    #: the scopes the viewer asks for
    oidc_viewer_scope: str = "openid profile"
    #: HTTPS: certificate chain and private key (PEM files)
    tls_cert: str = ""
    tls_key: str = ""
    #: secret that signs study links (HMAC-SHA256); empty: ``<data_dir>/link-secret``,
    #: generated once, shared by every process of the archive
    link_secret: str = ""
    #: seconds a verified API token or JWT is trusted without checking again (so a
    #: revoked token stops working within this time)
    auth_cache_seconds: float = 5.0
    # -- events (issue #17; see app/services/webhooks.py) --
    #: a study is stable this many seconds after its last new instance
    stable_seconds: float = 60.0
    #: the first retry of a failed webhook delivery waits this long (then doubling)
    webhook_backoff_seconds: float = 5.0
    #: a delivery is retried for this long, then given up
    webhook_retry_seconds: float = 86400.0
    #: seconds a receiver has to answer
    webhook_timeout: float = 10.0
    #: deliveries in flight at once, per server process
    webhook_concurrency: int = 8
    # -- routing (issue #17; see app/services/routes.py) --
    #: forwards in flight at once to one destination, across every process
    route_concurrency: int = 2
    #: the first retry of a failed forward waits this long (then doubling, at most 1 h)
    route_backoff_seconds: float = 10.0
    #: a forward is retried for this long, then given up
    route_retry_seconds: float = 86400.0
    #: seconds a destination has to answer one request or C-STORE
    route_timeout: float = 60.0
    #: a FHIR R4 server's base URL: each stable study is PUT there as an ImagingStudy
    #: (issue #18; the route ``fhir-push``); empty: none
    fhir_push_url: str = ""
    #: a bearer token for it
    fhir_push_token: str = ""
    #: a UPS "read study" workitem for each stable study (the route reading-worklist)
    reading_worklist: bool = True
    # -- people who sign in (issue #21; see app/auth/sessions.py) --
    #: a browser session ends after this many seconds without a request ...
    session_idle_seconds: float = 1800.0
    #: ... and this many seconds after sign-in, whatever happens (the absolute timeout)
    session_max_seconds: float = 43200.0
    #: failed sign-ins of one account within ``login_lock_seconds`` before it is locked
    login_max_failures: int = 5
    #: failed sign-ins from one client address (any account) before it is locked
    login_address_max_failures: int = 20
    #: how long a lock lasts, and the window failures are counted in
    login_lock_seconds: float = 900.0
    #: seconds a client has to send a request's line and headers (else 408)
    header_timeout: float = 30.0
    #: seconds a request body may stall between two chunks (else 408, nothing kept)
    body_timeout: float = 60.0

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def pg_dir(self) -> Path:
        return self.data_dir / "pg"

    @property
    def peers(self) -> dict[str, tuple[str, int]]:
        """``dimse_peers`` parsed: AE title -> (host, port), the C-MOVE destinations."""
        return parse_peers(self.dimse_peers)

    @property
    def peer_sources(self) -> dict[str, tuple[str, ...]]:
        """``dimse_peers`` parsed: AE title -> the hosts and networks it may call from."""
        return parse_peer_sources(self.dimse_peers)

    @property
    def hl7_peer_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.hl7_peers.split(",") if p.strip())

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """``cors_origins`` as serialized origins (Fetch standard, "origin"): lower case,
        no trailing slash, default ports dropped, as browsers send them in ``Origin``."""
        return tuple(normalize_origin(o) for o in self.cors_origins.split(",") if o.strip())

    @property
    def audit_enabled(self) -> bool:
        return self.audit or self.auth

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root for what is sent without a request to take it from (FHIR
        pushes): ``public_base_url``, else this server's own address."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::") else socket.getfqdn()
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}/dicom-web"

    @property
    def link_secret_path(self) -> Path:
        return self.data_dir / "link-secret"

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_jwks_url or self.oidc_public_key)

    @property
    def oidc_sign_in(self) -> bool:
        """Whether people sign in at the identity provider (else with local accounts)."""
        return bool(self.auth and self.oidc_client_id)

    @property
    def oidc_algorithm_list(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.oidc_algorithms.split(",") if a.strip())

    @property
    def viewer_path(self) -> Path:
        return Path(self.viewer_dir) if self.viewer_dir else self.data_dir / "viewer"

    @property
    def worker_count(self) -> int:
        return self.workers or min(8, 2 * (os.cpu_count() or 1))


#: environment variable -> settings field
ENVIRONMENT: dict[str, str] = {
    "PICTOR_HOST": "host",
    "PICTOR_PORT": "port",
    "PICTOR_DATA_DIR": "data_dir",
    "PICTOR_DIMSE_PORT": "dimse_port",
    "PICTOR_AE_TITLE": "dimse_ae_title",
    "PICTOR_DIMSE_PEERS": "dimse_peers",
    "PICTOR_DIMSE_RESTRICT": "dimse_restrict",
    "PICTOR_HL7_PORT": "hl7_port",
    "PICTOR_HL7_PEERS": "hl7_peers",
    "PICTOR_HEADER_TIMEOUT": "header_timeout",
    "PICTOR_BODY_TIMEOUT": "body_timeout",
    "PICTOR_CORS_ORIGINS": "cors_origins",
    "PICTOR_VIEWER_DIR": "viewer_dir",
    "DATABASE_URL": "database_url",
    "PICTOR_PUBLIC_BASE_URL": "public_base_url",
    "PICTOR_ON_DUPLICATE": "on_duplicate",
    "PICTOR_TRASH_DAYS": "trash_days",
    "PICTOR_MIN_FREE_BYTES": "min_free_bytes",
    "PICTOR_SCRUB_RATE": "scrub_rate",
    "PICTOR_BACKGROUND_NICE": "background_nice",
    "PICTOR_BACKGROUND_PROCESS": "background_process",
    "PICTOR_S3_ENDPOINT_URL": "s3_endpoint_url",
    "PICTOR_STORAGE_URL": "storage_url",
    "PICTOR_COLD_STORAGE_URL": "cold_storage_url",
    "PICTOR_TIER_AFTER_DAYS": "tier_after_days",
    "PICTOR_TIER_MIN_AGE_DAYS": "tier_min_age_days",
    "PICTOR_TIER_RECALL": "tier_recall",
    "PICTOR_TIER_RATE": "tier_rate",
    "PICTOR_TIER_INTERVAL": "tier_interval",
    "PICTOR_PURGE_INTERVAL": "purge_interval",
    "PICTOR_WORKERS": "workers",
    "PICTOR_LOG_LEVEL": "log_level",
    "PICTOR_LOG_FORMAT": "log_format",
    "PICTOR_ACCESS_LOG": "access_log",
    "PICTOR_AUTH": "auth",
    "PICTOR_INSECURE_NO_AUTH": "insecure_no_auth",
    "PICTOR_AUDIT": "audit",
    "PICTOR_OIDC_ISSUER": "oidc_issuer",
    "PICTOR_OIDC_AUDIENCE": "oidc_audience",
    "PICTOR_OIDC_JWKS_URL": "oidc_jwks_url",
    "PICTOR_OIDC_PUBLIC_KEY": "oidc_public_key",
    "PICTOR_OIDC_ALGORITHMS": "oidc_algorithms",
    "PICTOR_OIDC_SCOPE_CLAIM": "oidc_scope_claim",
    "PICTOR_OIDC_ROLES_CLAIM": "oidc_roles_claim",
    "PICTOR_OIDC_JWKS_COOLDOWN": "oidc_jwks_cooldown",
    "PICTOR_OIDC_CLIENT_ID": "oidc_client_id",
    "PICTOR_OIDC_VIEWER_SCOPE": "oidc_viewer_scope",
    "PICTOR_TLS_CERT": "tls_cert",
    "PICTOR_TLS_KEY": "tls_key",
    "PICTOR_LINK_SECRET": "link_secret",
    "PICTOR_AUTH_CACHE_SECONDS": "auth_cache_seconds",
    "PICTOR_STABLE_SECONDS": "stable_seconds",
    "PICTOR_WEBHOOK_BACKOFF_SECONDS": "webhook_backoff_seconds",
    "PICTOR_WEBHOOK_RETRY_SECONDS": "webhook_retry_seconds",
    "PICTOR_WEBHOOK_TIMEOUT": "webhook_timeout",
    "PICTOR_WEBHOOK_CONCURRENCY": "webhook_concurrency",
    "PICTOR_ROUTE_CONCURRENCY": "route_concurrency",
    "PICTOR_ROUTE_BACKOFF_SECONDS": "route_backoff_seconds",
    "PICTOR_ROUTE_RETRY_SECONDS": "route_retry_seconds",
    "PICTOR_ROUTE_TIMEOUT": "route_timeout",
    "PICTOR_FHIR_PUSH_URL": "fhir_push_url",
    "PICTOR_FHIR_PUSH_TOKEN": "fhir_push_token",
    "PICTOR_READING_WORKLIST": "reading_worklist",
    "PICTOR_SESSION_IDLE_SECONDS": "session_idle_seconds",
    "PICTOR_SESSION_MAX_SECONDS": "session_max_seconds",
    "PICTOR_LOGIN_MAX_FAILURES": "login_max_failures",
    "PICTOR_LOGIN_ADDRESS_MAX_FAILURES": "login_address_max_failures",
    "PICTOR_LOGIN_LOCK_SECONDS": "login_lock_seconds",
}


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _invalid(
    exc: msgspec.ValidationError,
    raw: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> str:
    """The message for a value msgspec refused, naming where it came from (the
    environment variable or the command-line option) and the value given (issue #19:
    "Expected int, got str - at $.workers" named neither)."""
    text = str(exc)
    field = text.rpartition("$.")[2].strip("`") if "$." in text else ""
    if field not in raw:
        return f"invalid setting: {text}"
    reason = text.partition(" - at ")[0]
    if overrides.get(field) is not None:
        origin = "--" + field.replace("_", "-")
    else:
        origin = next((v for v, f in ENVIRONMENT.items() if f == field and env.get(v)), field)
    return f"{origin}={raw[field]!r} is not a valid value: {reason}"


def _peer_items(text: str) -> list[tuple[str, str, str, int | None]]:
    """``(item, AET, host or network, port)`` of each ``AET@host:port`` or
    ``AET@network`` (CIDR, e.g. ``CT@10.0.4.0/24``; IPv6 hosts in brackets)."""
    items: list[tuple[str, str, str, int | None]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        aet, at, address = item.partition("@")
        aet = aet.strip()
        if not at or not 0 < len(aet) <= 16:
            raise ConfigError(
                f"DIMSE peer {item!r} is not AET@host:port or AET@network "
                "(an AE title has 1 to 16 characters)"
            )
        if "/" in address:
            try:
                ipaddress.ip_network(address.strip("[]"), strict=False)
            except ValueError:
                raise ConfigError(f"DIMSE peer {item!r}: {address!r} is not a network") from None
            items.append((item, aet, address.strip("[]"), None))
            continue
        host, colon, port = address.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"DIMSE peer {item!r} is not AET@host:port or AET@network")
        items.append((item, aet, host, int(port)))
    return items


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    """The C-MOVE destinations of ``dimse_peers``: AE title -> (host, port)."""
    return {aet: (host, port) for _, aet, host, port in _peer_items(text) if port is not None}


def parse_peer_sources(text: str) -> dict[str, tuple[str, ...]]:
    """Where each peer of ``dimse_peers`` may call from: AE title -> hosts and networks
    (an ``AET@host:port`` peer calls from that host's addresses)."""
    sources: dict[str, tuple[str, ...]] = {}
    for _, aet, host, _port in _peer_items(text):
        sources[aet] = (*sources.get(aet, ()), host)
    return sources


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[^/?#@\s\[\]:]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalize_origin(text: str) -> str:
    """One allowed CORS origin from the settings, as a browser serializes it in its
    ``Origin`` header (``scheme://host[:port]``), or ``*`` / ``null``."""
    origin = text.strip().rstrip("/").lower()
    if origin in ("*", "null"):
        return origin
    if not _ORIGIN.fullmatch(origin):
        raise ConfigError(
            f"CORS origin {text.strip()!r} is not scheme://host[:port] (e.g. "
            f"https://viewer.example.org), '*' or 'null'"
        )
    scheme = origin.partition("://")[0]
    default = _DEFAULT_PORTS.get(scheme)
    if default and origin.endswith(default):
        origin = origin[: -len(default)]
    return origin


def check_storage_url(url: str, variable: str = "PICTOR_STORAGE_URL") -> None:
    """``PICTOR_STORAGE_URL`` names a directory (``file:///path``) or a bucket
    (``s3://bucket[/prefix]``), else a clear error."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path.startswith("/") and parts.netloc in ("", "localhost"):
        return
    plain = all(segment not in (".", "..") for segment in parts.path.split("/"))
    if parts.scheme == "s3" and _BUCKET.fullmatch(parts.netloc) and not parts.query and plain:
        return
    raise ConfigError(
        f"{variable}={url!r} is not file:///absolute/path nor s3://bucket[/prefix] "
        "(a bucket name has 3 to 63 lower-case letters, digits, dots and hyphens)"
    )


#: S3 bucket names (AWS's rules, which S3-compatible servers follow)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from ``environ`` (default: the process environment) and ``overrides``.

    ``overrides`` holds command-line values; ``None`` values mean "not given".
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for var, field in ENVIRONMENT.items():
        if env.get(var, "") != "":
            raw[field] = env[var]
    for field, value in (overrides or {}).items():
        if value is not None:
            raw[field] = value
    if "data_dir" in raw:
        raw["data_dir"] = Path(raw["data_dir"])
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_invalid(exc, raw, env, overrides or {})) from None
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"PICTOR_LOG_LEVEL={settings.log_level!r}: use one of {', '.join(LOG_LEVELS)}"
        )
    check_storage_url(settings.storage_url)
    check_storage_url(settings.cold_storage_url, "PICTOR_COLD_STORAGE_URL")
    if settings.cold_storage_url and settings.cold_storage_url == settings.storage_url:
        raise ConfigError("PICTOR_COLD_STORAGE_URL must name another place than the hot storage")
    if min(settings.tier_after_days, settings.tier_min_age_days, settings.tier_interval) < 0:
        raise ConfigError("tier days and interval cannot be negative")
    if settings.tier_rate <= 0:
        raise ConfigError("PICTOR_TIER_RATE must be a positive number of bytes a second")
    if not 0 < settings.port < 65536 or not 0 <= settings.dimse_port < 65536:
        raise ConfigError("ports must be between 1 and 65535 (DIMSE port 0 turns DIMSE off)")
    if not 0 < len(settings.dimse_ae_title.strip()) <= 16:
        raise ConfigError("the AE title must have 1 to 16 characters (PS3.5 6.2, VR AE)")
    parse_peer_sources(settings.dimse_peers)  # refuses a malformed peer at start
    if not 0 <= settings.hl7_port < 65536:
        raise ConfigError("PICTOR_HL7_PORT / --hl7-port is between 1 and 65535 (0: HL7 off)")
    if settings.hl7_port and settings.hl7_port in (settings.port, settings.dimse_port):
        raise ConfigError("the HL7 port must differ from the HTTP and DIMSE ports")
    bad = [p for p in settings.hl7_peer_list if not re.fullmatch(r"[A-Za-z0-9.:/_-]{1,255}", p)]
    if bad:
        raise ConfigError(f"PICTOR_HL7_PEERS: {bad[0][:40]!r} is not a host name or a network")
    if not 0 <= settings.trash_days <= 36500:
        raise ConfigError("PICTOR_TRASH_DAYS is between 0 (delete at once) and 36500")
    if "workers" in raw and not 1 <= settings.workers <= 64:
        raise ConfigError(
            f"PICTOR_WORKERS={raw['workers']!r} / --workers: give 1 to 64 server processes "
            "(unset: two per core, at most 8)"
        )
    if not 0 <= settings.background_nice <= 19:
        raise ConfigError("PICTOR_BACKGROUND_NICE is a niceness from 0 to 19")
    if settings.scrub_rate < 0:
        raise ConfigError("PICTOR_SCRUB_RATE cannot be negative (0 turns the scrub off)")
    if settings.min_free_bytes < 0:
        raise ConfigError("PICTOR_MIN_FREE_BYTES cannot be negative (0 turns the floor off)")
    if not 1 <= settings.purge_interval <= 86400:
        raise ConfigError("PICTOR_PURGE_INTERVAL is between 1 and 86400 seconds")
    _check_access_settings(settings)
    viewer_dir = settings.viewer_dir.strip()
    return msgspec.structs.replace(
        settings,
        data_dir=settings.data_dir.expanduser().resolve(),
        public_base_url=settings.public_base_url.rstrip("/"),
        cors_origins=",".join(settings.cors_origin_list),  # ConfigError when malformed
        viewer_dir=str(Path(viewer_dir).expanduser().resolve()) if viewer_dir else "",
    )


#: JWS algorithms (RFC 7518) a verifier must never accept from a token's header: "none"
#: (no signature) and HMAC (a public key used as a shared secret: key confusion)
_UNSAFE_ALGORITHMS = ("none", "HS256", "HS384", "HS512")


def _check_access_settings(settings: Settings) -> None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("HTTPS needs both a certificate (--tls-cert) and a key (--tls-key)")
    for path in (settings.tls_cert, settings.tls_key, settings.oidc_public_key):
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"no such file: {path}")
    unsafe = [a for a in settings.oidc_algorithm_list if a.upper() in _UNSAFE_ALGORITHMS]
    if unsafe:
        raise ConfigError(f"JWT algorithms {unsafe} are not allowed (no signature / HMAC)")
    if settings.oidc_jwks_url and settings.oidc_public_key:
        raise ConfigError("give a JWKS URL or a public key for JWTs, not both")
    if settings.oidc_enabled and not settings.oidc_issuer:
        raise ConfigError("JWT verification needs the issuer (PICTOR_OIDC_ISSUER)")
    if settings.oidc_client_id and not settings.oidc_enabled:
        raise ConfigError(
            "signing in at the identity provider (PICTOR_OIDC_CLIENT_ID) needs its keys to "
            "verify the tokens: PICTOR_OIDC_JWKS_URL (or PICTOR_OIDC_PUBLIC_KEY) and "
            "PICTOR_OIDC_ISSUER"
        )
    if settings.oidc_client_id and "openid" not in settings.oidc_viewer_scope.split():
        raise ConfigError("PICTOR_OIDC_VIEWER_SCOPE must include openid")
    if settings.auth_cache_seconds < 0:
        raise ConfigError("PICTOR_AUTH_CACHE_SECONDS cannot be negative")
    if not 0 < settings.session_idle_seconds <= settings.session_max_seconds:
        raise ConfigError(
            "sessions need 0 < PICTOR_SESSION_IDLE_SECONDS <= PICTOR_SESSION_MAX_SECONDS"
        )
    if settings.login_max_failures < 1 or settings.login_address_max_failures < 1:
        raise ConfigError("PICTOR_LOGIN_(ADDRESS_)MAX_FAILURES must be at least 1")
    if settings.stable_seconds < 0 or settings.webhook_backoff_seconds <= 0:
        raise ConfigError(
            "PICTOR_STABLE_SECONDS and PICTOR_WEBHOOK_BACKOFF_SECONDS must be positive"
        )
    if settings.webhook_timeout <= 0 or settings.webhook_concurrency < 1:
        raise ConfigError("PICTOR_WEBHOOK_TIMEOUT and PICTOR_WEBHOOK_CONCURRENCY must be positive")
    if (
        settings.route_concurrency < 1
        or settings.route_backoff_seconds <= 0
        or settings.route_timeout <= 0
    ):
        raise ConfigError(
            "PICTOR_ROUTE_CONCURRENCY, PICTOR_ROUTE_BACKOFF_SECONDS and PICTOR_ROUTE_TIMEOUT "
            "must be positive"
        )
    if settings.fhir_push_url:
        parts = urlsplit(settings.fhir_push_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(
                "PICTOR_FHIR_PUSH_URL is a FHIR server's base URL, http(s)://host/path; "
                f"got {settings.fhir_push_url[:100]!r}"
            )
    if settings.login_lock_seconds <= 0:
        raise ConfigError("PICTOR_LOGIN_LOCK_SECONDS must be positive")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings) -> str | None:
    """Why these settings must not be served: a non-loopback address without access
    control, unless ``insecure_no_auth`` says so explicitly."""
    if settings.auth or settings.insecure_no_auth or is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without access control: anyone who can "
        "reach this address could read and store patient images. Turn on authentication "
        "(--auth / PICTOR_AUTH=true, then create tokens with 'pictor token create'), or, "
        "on a network you trust entirely, pass --insecure-no-auth "
        "(PICTOR_INSECURE_NO_AUTH=true)"
    )


def to_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    values = msgspec.to_builtins(settings, enc_hook=str)
    return {
        var: str(values[field])
        for var, field in ENVIRONMENT.items()
        if values[field] != "" and not (field == "workers" and values[field] == 0)
    }
