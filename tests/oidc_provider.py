"""A real OpenID Provider on loopback for tests: the npm package ``oidc-provider``
(nobody here wrote it), run by ``tests/e2e/browser/idp.mjs`` with one public client
and the test's people (see that script)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from server import free_port

BROWSER = Path(__file__).resolve().parent / "e2e" / "browser"
AUDIENCE = "pictor-api"
RESOURCE = "urn:pictor:api"


def missing() -> str | None:
    if not (BROWSER / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed (npm ci --prefix tests/e2e/browser)"
    return None


class OidcProvider:
    def __init__(
        self,
        *,
        client_id: str,
        redirect_uris: list[str],
        post_logout_redirect_uris: list[str],
        people: dict[str, dict[str, Any]],
        access_token_ttl: int = 300,
    ) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.config = {
            "port": self.port,
            "clientId": client_id,
            "redirectUris": redirect_uris,
            "postLogoutRedirectUris": post_logout_redirect_uris,
            "people": people,
            "audience": AUDIENCE,
            "resource": RESOURCE,
            "accessTokenTTL": access_token_ttl,
        }
        self.proc: subprocess.Popen[str] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="pictor-idp-")

    @property
    def env(self) -> dict[str, str]:
        """What a Pictor server needs to let people sign in here."""
        return {
            "PICTOR_OIDC_ISSUER": self.issuer,
            "PICTOR_OIDC_AUDIENCE": AUDIENCE,
            "PICTOR_OIDC_JWKS_URL": self.issuer + "/jwks",
            "PICTOR_OIDC_CLIENT_ID": str(self.config["clientId"]),
            "PICTOR_OIDC_ROLES_CLAIM": "roles",
        }

    def start(self, timeout: float = 30) -> OidcProvider:
        config = Path(self._dir.name) / "idp.json"
        config.write_text(json.dumps(self.config))
        log = open(Path(self._dir.name) / "idp.log", "w")  # noqa: SIM115 - kept while running
        self.proc = subprocess.Popen(
            ["node", str(BROWSER / "idp.mjs"), str(config)],
            cwd=BROWSER,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=2)
                if found.status_code == 200 and found.json()["issuer"] == self.issuer:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "the OpenID provider exited: " + self.log()
            assert time.monotonic() < deadline, "the OpenID provider did not start: " + self.log()
            time.sleep(0.2)

    def log(self) -> str:
        return (Path(self._dir.name) / "idp.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self._dir.cleanup()
