"""OHIF in a real browser against a real Pictor (issue 6).

Debian's headless Chromium, driven by playwright-core from npm (``ohif.mjs``), uses the
OHIF bundle that ``pictor viewer install`` put in ``tests/e2e/browser/viewer`` (``.ci/run``
installs both; see ``tests/e2e/browser/package.json``). One browser session walks through
the study list, a wildcard filter, opening a CT series and a multi-frame ultrasound
(WADO-RS frames with ``transfer-syntax=*``, PS3.18 10.4.1.1.3; once with OHIF's
``omitQuotationForMultipartRequest`` on, once off), an upload through OHIF's dialog
(STOW-RS, PS3.18 10.5), an IHE Invoke Image Display link (IHE RAD TF-2 4.106) and
cross-origin fetches from a page of an allowed and of a refused origin (Fetch standard
CORS). Screenshots are kept under ``$PICTOR_TEST_ARTIFACTS`` (default ``tests/artifacts``)
and their pixels are checked: a viewport that drew nothing is uniform.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from PIL import Image

from app.viewer import installed

import oidc_provider
from conftest import Archive, Pictor, content_type, multipart, pictor_cli
from corpus import get_ref
from server import free_port
from synth import ct_slice, new_uids

HERE = Path(__file__).resolve().parent
VIEWER_DIR = Path(os.environ.get("PICTOR_TEST_VIEWER_DIR", HERE / "viewer"))
ARTIFACTS = Path(os.environ.get("PICTOR_TEST_ARTIFACTS", HERE.parents[1] / "artifacts")) / "browser"
CHROMIUM = os.environ.get("PICTOR_TEST_CHROMIUM", "/usr/bin/chromium")
US_FILE = "examples_ybr_color.dcm"  # 30 frames of JPEG Baseline YBR_FULL_422, patient "PLA"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci --prefix tests/e2e/browser)"
    if installed(VIEWER_DIR) is None:
        return f"no OHIF bundle in {VIEWER_DIR} (pictor viewer install --viewer-dir {VIEWER_DIR})"
    return None


@pytest.fixture(scope="module")
def browser_tools() -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second web site on loopback: a blank page, reachable as two origins
    (``127.0.0.1:port`` and ``localhost:port``)."""
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<!doctype html><title>other site</title><p>other site")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _drawn(png: str) -> bool:
    """Whether a viewport screenshot shows an image: the middle of the viewport (its
    corners hold text overlays) has lit pixels and contrast, unlike an empty viewport."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    h, w = pixels.shape
    middle = pixels[h // 5 : 4 * h // 5, w // 5 : 4 * w // 5]
    return bool((middle > 40).mean() > 0.02 and middle.std() > 10)


def _run(scenario: dict[str, Any], tmp_path: Path, name: str = "result") -> dict[str, Any]:
    """ohif.mjs on ``scenario``; the steps it recorded, every one of them passed."""
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    done = subprocess.run(
        ["node", str(HERE / "ohif.mjs"), str(scenario_file)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    steps: dict[str, Any] = result["steps"]
    failed = {k: v["error"] for k, v in steps.items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1)[:6000]
    return steps


@pytest.mark.slow
def test_ohif_against_pictor(
    browser_tools: None, other_origin: int, tmp_path: Path, pictor: Pictor
) -> None:
    allowed = f"http://127.0.0.1:{other_origin}"
    refused = f"http://localhost:{other_origin}"
    port = free_port()
    process = pictor(
        tmp_path / "data",
        port=port,
        env={"PICTOR_VIEWER_DIR": str(VIEWER_DIR), "PICTOR_CORS_ORIGINS": allowed},
    )
    http = httpx.Client(base_url=process.dicomweb, timeout=60)
    ct_study, ct_series = new_uids()
    ct = [ct_slice(ct_study, ct_series, i, rows=256, cols=256) for i in range(8)]
    us_path = get_ref(US_FILE).path
    stored = http.post(
        "/studies",
        content=multipart([*ct, us_path.read_bytes()]),
        headers={"Content-Type": content_type()},
    )
    assert stored.status_code == 200, stored.text
    us_study = "1.2.840.114340.3.8251017118051.1.20160503.120850.2171"
    ct_accession = http.get(
        "/studies", params={"StudyInstanceUID": ct_study, "includefield": "AccessionNumber"}
    ).json()[0]["00080050"]["Value"][0]

    up_study, up_series = new_uids()
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(
        ct_slice(
            up_study,
            up_series,
            0,
            rows=128,
            cols=128,
            patient_id="UP1",
            patient_name="UPLOAD^VIA^OHIF",
        )
    )
    scenario = {
        "base": process.base,
        "chromium": CHROMIUM,
        "artifacts": str(ARTIFACTS),
        "studies": [
            # opened with OHIF's default quoting off (Accept: ...; type=application/octet-stream)
            {"key": "ct", "uid": ct_study, "name": "DOE, JANE", "omitQuotation": True},
            # and with quotes (type="application/octet-stream")
            {"key": "us", "uid": us_study, "name": "PLA", "omitQuotation": False},
        ],
        "filter": {"text": "DO", "shown": "DOE, JANE", "hidden": "PLA"},
        "upload": str(upload),
        "iid": {"accessionNumber": ct_accession},
        "cors": {"allowed": allowed, "refused": refused},
    }
    steps = _run(scenario, tmp_path)

    # the study list: both studies, with their patient names and modalities
    rows = steps["study_list"]["rows"]
    assert "CT" in rows["DOE, JANE"] and "CT CHEST SYNTHETIC" in rows["DOE, JANE"]
    assert "US" in rows["PLA"]
    # a wildcard filter on the patient name narrows it (OHIF sends *DO*)
    shown = " | ".join(steps["filter"]["rows"])
    assert "DOE, JANE" in shown and "PLA" not in shown, shown
    assert any("*" in q["url"] for q in steps["filter"]["queries"])
    assert all(q["status"] == 200 for q in steps["filter"]["queries"])

    # each study drew an image: one frame request per frame, stored syntax, all 200
    for key, frames in (("ct", 8), ("us", 30)):
        opened = steps[f"open_{key}"]
        assert opened["metadata"] and all(r["status"] == 200 for r in opened["metadata"])
        assert len(opened["frames"]) >= 1
        assert len({r["url"] for r in opened["frames"]}) <= frames
        assert all(r["status"] == 200 for r in opened["frames"]), opened["frames"][:3]
        assert all("transfer-syntax=*" in r["accept"].replace('"', "") for r in opened["frames"])
        assert opened["thumbnails"] and all(r["status"] == 200 for r in opened["thumbnails"])
        assert _drawn(opened["screenshot"]), f"{key}: the viewport is blank"
    # OHIF's two spellings of the same Accept (PS3.18 8.7.3.5: quoted parameters)
    assert all(
        'type="application/octet-stream"; transfer-syntax="*"' in r["accept"]
        for r in steps["open_us"]["frames"]
    )
    assert all("type=application/octet-stream" in r["accept"] for r in steps["open_ct"]["frames"])
    assert "CT CHEST SYNTHETIC" in steps["open_ct"]["text"]

    # the upload went through STOW-RS and is in the archive
    assert steps["upload"]["status"] == 200
    assert steps["upload"]["contentType"].startswith("multipart/related")
    found = http.get("/studies", params={"StudyInstanceUID": up_study}).json()
    assert found and found[0]["00100010"]["Value"][0]["Alphabetic"] == "UPLOAD^VIA^OHIF"

    # the IID link (by accession number) opened the CT study
    assert f"StudyInstanceUIDs={ct_study}" in steps["iid"]["url"]
    assert _drawn(steps["iid"]["screenshot"])

    # CORS: the allowed origin reads answers, errors included; the other cannot
    ok = steps["cors_allowed"]
    assert ok["origin"] == allowed
    assert ok["simple"]["ok"] and ok["simple"]["status"] == 200
    assert ok["preflighted"]["ok"] and ok["preflighted"]["status"] == 200
    assert ok["error"]["ok"] and ok["error"]["status"] == 400 and ok["error"]["warning"]
    no = steps["cors_refused"]
    assert no["origin"] == refused
    assert not no["simple"]["ok"] and not no["preflighted"]["ok"] and not no["error"]["ok"]
    http.close()


@pytest.mark.slow
def test_ohif_behind_the_sign_in(browser_tools: None, tmp_path: Path, pictor: Pictor) -> None:
    """Issue #21: with --auth, a person opens the viewer, is sent to Pictor's sign-in
    form, signs in (a wrong password first), sees the study list and an image, uploads
    through OHIF (a STOW-RS authenticated by the session cookie, from the viewer's own
    origin), is sent back to sign in when the session ends, and signs out."""
    data = tmp_path / "data"
    process = pictor(data, env={"PICTOR_VIEWER_DIR": str(VIEWER_DIR), "PICTOR_AUTH": "true"})
    added = pictor_cli(
        "user",
        "add",
        "tina",
        "--role",
        "technologist",
        "--password-stdin",
        data_dir=data,
        stdin="tina's password 1\n",
    )
    assert added.returncode == 0, added.stderr
    writer = pictor_cli(
        "token", "create", "--name", "loader", "--scopes", "read,write", data_dir=data
    )
    http = httpx.Client(
        base_url=process.dicomweb,
        timeout=60,
        headers={"Authorization": f"Bearer {writer.stdout.strip()}"},
    )
    study, series = new_uids()
    stored = http.post(
        "/studies",
        content=multipart([ct_slice(study, series, i, rows=256, cols=256) for i in range(4)]),
        headers={"Content-Type": content_type()},
    )
    assert stored.status_code == 200, stored.text
    up_study, up_series = new_uids()
    upload = tmp_path / "upload.dcm"
    upload.write_bytes(
        ct_slice(
            up_study, up_series, 0, rows=64, cols=64, patient_id="UP2", patient_name="SIGNED^IN"
        )
    )
    steps = _run(
        {
            "base": process.base,
            "chromium": CHROMIUM,
            "artifacts": str(ARTIFACTS / "login"),
            "login": {"user": "tina", "password": "tina's password 1"},
            "studies": [{"key": "ct", "uid": study, "name": "DOE, JANE", "omitQuotation": True}],
            "upload": str(upload),
        },
        tmp_path,
        "login",
    )
    # sent to the form by the viewer, a wrong password answered on the form
    assert "/login?next=viewer" in steps["wrong_password"]["redirected"]
    # signed in: back in the viewer, with an HttpOnly, SameSite session cookie
    assert steps["sign_in"]["url"].startswith(process.base + "/viewer/")
    cookie = steps["sign_in"]["cookie"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert "CT" in steps["study_list"]["rows"]["DOE, JANE"]
    opened = steps["open_ct"]
    assert opened["frames"] and all(r["status"] == 200 for r in opened["frames"])
    assert _drawn(opened["screenshot"]), "the viewport is blank"
    # the upload went through with the cookie (and its Origin): it is in the archive
    assert steps["upload"]["status"] == 200
    found = http.get("/studies", params={"StudyInstanceUID": up_study}).json()
    assert found and found[0]["00100010"]["Value"][0]["Alphabetic"] == "SIGNED^IN"
    # the session ended under the open viewer: back to the form, then back to the list
    assert "/login?next=viewer" in steps["session_ended"]["url"]
    assert "/viewer/" in steps["session_ended"]["back"]
    # signed out: the form, no cookie, and the viewer closed again
    out = steps["sign_out"]
    assert "/login?next=" in out["url"] and out["form"] == 1 and out["cookie"] is None
    archive = Archive(process)
    deadline = time.monotonic() + 15  # the audit trail is written in batches
    while True:
        audit = archive.query(
            "SELECT action, status FROM audit_event WHERE who = 'user:tina' ORDER BY id"
        )
        actions = [(r["action"], r["status"]) for r in audit]
        if ("logout", 303) in actions or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert ("login", 401) in actions and ("login", 303) in actions and ("logout", 303) in actions
    assert ("stow", 200) in actions and ("wado-frames", 200) in actions
    http.close()


@pytest.mark.slow
def test_ohif_signs_in_at_the_identity_provider(
    browser_tools: None, tmp_path: Path, pictor: Pictor
) -> None:
    """Issue #21: with PICTOR_OIDC_CLIENT_ID, /login and the viewer send the person to a
    real OpenID Provider (oidc-provider from npm); OHIF signs in with the authorization
    code and PKCE, and Pictor verifies the JWT access token it sends (issuer, audience,
    keys from the provider's JWK Set) and takes the scopes of the person's role from the
    roles claim. A token no longer accepted sends the person back to the provider; the
    viewer's Logout ends the session at the provider."""
    if oidc_provider.missing():
        pytest.fail(oidc_provider.missing() or "")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp = oidc_provider.OidcProvider(
        client_id="pictor-viewer",
        redirect_uris=[f"{base}/viewer/callback", f"{base}/viewer/silent-refresh.html"],
        post_logout_redirect_uris=[f"{base}/viewer/", f"{base}/viewer"],
        people={"rita": {"roles": ["radiologist"], "name": "Rita Radiologist"}},
    ).start()
    try:
        data = tmp_path / "data"
        process = pictor(
            data,
            port=port,
            env={"PICTOR_VIEWER_DIR": str(VIEWER_DIR), "PICTOR_AUTH": "true", **idp.env},
        )
        writer = pictor_cli(
            "token", "create", "--name", "loader", "--scopes", "write", data_dir=data
        )
        study, series = new_uids()
        stored = httpx.post(
            process.dicomweb + "/studies",
            content=multipart([ct_slice(study, series, i, rows=256, cols=256) for i in range(4)]),
            headers={
                "Content-Type": content_type(),
                "Authorization": f"Bearer {writer.stdout.strip()}",
            },
        )
        assert stored.status_code == 200, stored.text
        steps = _run(
            {
                "base": base,
                "chromium": CHROMIUM,
                "artifacts": str(ARTIFACTS / "oidc"),
                "oidc": {"issuer": idp.issuer, "user": "rita"},
                "studies": [
                    {"key": "ct", "uid": study, "name": "DOE, JANE", "omitQuotation": True}
                ],
            },
            tmp_path,
            "oidc",
        )
        # /login sent the person to the provider, and the provider back to the viewer
        assert steps["oidc_sign_in"]["provider"].startswith(idp.issuer)
        token = steps["oidc_sign_in"]["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["iss"] == idp.issuer and claims["aud"] == "pictor-api"
        assert claims["sub"] == "rita" and claims["roles"] == ["radiologist"]
        # her role decides what the token may do: read, not store (a real request of
        # ours; with the provider still up: a server process that has not needed its
        # keys yet fetches them now)
        bearer = {"Authorization": f"Bearer {token}"}
        assert httpx.get(process.dicomweb + "/studies", headers=bearer).status_code == 200
        other, other_series = new_uids()
        refused = httpx.post(
            process.dicomweb + "/studies",
            content=multipart([ct_slice(other, other_series, 0, rows=16, cols=16)]),
            headers={"Content-Type": content_type(), **bearer},
        )
        assert refused.status_code == 403
        assert 'scope="write"' in refused.headers["www-authenticate"]
    finally:
        idp.stop()
    # the viewer read with the token: the list, the metadata, the frames, an image
    assert "CT" in steps["study_list"]["rows"]["DOE, JANE"]
    opened = steps["open_ct"]
    assert opened["frames"] and all(r["status"] == 200 for r in opened["frames"])
    assert _drawn(opened["screenshot"]), "the viewport is blank"
    # a refused token: 401, then a new token from the provider, and the list again
    refused = steps["oidc_token_refused"]
    assert refused["status"] == 401 and refused["changed"]
    # signed out at the provider: back to its sign-in form
    assert steps["oidc_sign_out"]["url"].startswith(idp.issuer)
    # Pictor's audit trail names the provider's subject
    archive = Archive(process)
    rows = archive.query("SELECT DISTINCT action FROM audit_event WHERE who = 'jwt:rita'")
    assert {"qido-studies", "wado-frames"} <= {r["action"] for r in rows}
