"""OIDC / JWT access tokens (RFC 7519, signed as JWS, RFC 7515).

A token is accepted when (RFC 7519 7.2, RFC 9068 4):

* its header's ``alg`` is one of the configured asymmetric algorithms: ``none`` and the
  HMAC family are refused before anything else (so a public key can never be used as
  an HMAC secret: the "algorithm confusion" attack), and PyJWT is also told the
  allowed list when it verifies;
* its signature verifies with the configured public key, or with the key of the JWK
  Set (RFC 7517) at the JWKS URL whose ``kid`` the header names. The set is cached
  (5 minutes) and fetched again when a token names a key id it does not hold (the
  issuer rotated its keys), at most once per ``oidc_jwks_cooldown`` seconds; PyJWT's
  :class:`jwt.PyJWKClient` does blocking I/O, so it runs in a thread;
* ``exp`` is in the future (required), ``nbf`` / ``iat`` are not (30 s leeway), ``iss``
  is the configured issuer (required) and ``aud`` contains the configured audience
  (when one is configured).

Scopes come from the configured claim (default ``scope``, a space-separated string as
in RFC 8693 4.2 / RFC 9068, or a list), else ``scp``; roles from an optional claim
(a dotted path such as ``realm_access.roles``). Scope values ``read``, ``write``,
``delete``, ``admin``, ``worklist`` count, also as ``pictor:read`` / ``pictor.read`` /
``pictor/read``; a role (``viewer``, ``technologist``, ``radiologist``, ``admin``) in the
roles claim grants that role's scopes, as for local accounts (issue #21).

A verified token is trusted for ``auth_cache_seconds`` (never beyond its ``exp``)
without verifying the signature again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.auth.principal import ROLES, SCOPES, Principal
from app.config import Settings

LEEWAY = 30
#: seconds the JWK Set is kept before it is fetched again anyway
JWKS_LIFESPAN = 300


class JwtError(ValueError):
    """The token cannot be accepted; the message says why (for the log and the
    ``error_description`` of RFC 6750 3)."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _unprefixed(value: str) -> str:
    for prefix in ("pictor:", "pictor.", "pictor/"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def granted_scopes(claims: dict[str, Any], scope_claim: str, roles_claim: str) -> frozenset[str]:
    """Scopes named by the scope claim, and those of the roles named by the roles claim
    (:data:`app.auth.principal.ROLES`: ``viewer``, ``technologist``, ``radiologist``,
    ``admin``; a scope's name counts there too)."""
    values = _names(_claim(claims, scope_claim))
    if not values and scope_claim != "scp":
        values = _names(claims.get("scp"))
    out: set[str] = {v for v in map(_unprefixed, values) if v in SCOPES}
    if roles_claim:
        for value in map(_unprefixed, _names(_claim(claims, roles_claim))):
            if value in ROLES:
                out |= ROLES[value]
            elif value in SCOPES:
                out.add(value)
    return frozenset(out)


class JwtVerifier:
    SIZE = 4096

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithms = list(settings.oidc_algorithm_list)
        self._key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        if settings.oidc_public_key:
            with open(settings.oidc_public_key, "rb") as f:
                self._key = load_pem_public_key(f.read())
        elif settings.oidc_jwks_url:
            options: dict[str, Any] = {"lifespan": JWKS_LIFESPAN, "timeout": 10}
            try:  # PyJWT >= 2.10 limits refreshes on unknown key ids itself
                self._jwks = jwt.PyJWKClient(
                    settings.oidc_jwks_url,
                    cooldown_duration=settings.oidc_jwks_cooldown,
                    **options,
                )
            except TypeError:
                self._jwks = jwt.PyJWKClient(settings.oidc_jwks_url, **options)
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        claims = await self._claims(token)
        who = claims.get("sub") or claims.get("client_id") or claims.get("azp") or "?"
        principal = Principal(
            f"jwt:{who}",
            granted_scopes(claims, self.settings.oidc_scope_claim, self.settings.oidc_roles_claim),
        )
        until = min(now + self.settings.auth_cache_seconds, float(claims["exp"]))
        self._cache[token] = (until, principal)
        while len(self._cache) > self.SIZE:
            self._cache.popitem(last=False)
        return principal

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise JwtError(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise JwtError(f"algorithm {alg!r} is not accepted")
        if self._key is not None:
            key = self._key
        elif self._jwks is not None:
            if not header.get("kid"):
                raise JwtError("the token names no key id (kid)")
            try:
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientConnectionError as exc:
                raise JwtError(f"the issuer's keys could not be fetched: {exc}") from exc
            except jwt.PyJWTError as exc:
                raise JwtError(f"unknown signing key: {exc}") from exc
        else:
            raise JwtError("JWTs are not configured here")
        options: Any = {"require": ["exp", "iss"]}
        if not self.settings.oidc_audience:
            options["verify_aud"] = False
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.settings.oidc_audience or None,
                issuer=self.settings.oidc_issuer,
                leeway=LEEWAY,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise JwtError(str(exc)) from exc
        return claims
