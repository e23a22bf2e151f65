"""The built-in web viewer: OHIF's prebuilt bundle, installed from npm, served at ``/viewer``.

OHIF (npm ``@ohif/app``) publishes its production build in the package's ``dist/``: a
single-page application built for the site root (``window.PUBLIC_URL="/"``, absolute
``/app.bundle.js`` references, webpack's public path ``"/"``). :func:`install` fetches
the package with ``npm pack`` (one tarball, integrity-checked by npm; none of the
package's build dependencies), unpacks ``dist/`` into the viewer directory and makes the
build independent of where it is mounted (:func:`relocate`): webpack's public path is
taken from ``window.PUBLIC_URL`` (pages) or the worker script's own URL (web workers),
and style sheets and the manifest refer to fonts and icons relatively.
:func:`index_html` then rewrites the page's absolute references into relative ones for
each deep link, and :func:`app_config_js` writes an OHIF configuration whose DICOMweb
root is found relative to the script itself. No URL carries a host name or a proxy
prefix, so the viewer works through any name, port or reverse-proxy path.

This module does no HTTP; ``app.dicomweb.viewer`` serves what it prepares.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

OHIF_PACKAGE = "@ohif/app"
#: the OHIF release Pictor is tested with (tests/browser)
OHIF_VERSION = "3.13.2"
#: written last by :func:`install`: a directory without it is not a usable bundle
MARKER = ".pictor-viewer.json"
INSTALL_COMMAND = "pictor viewer install"

#: webpack's runtime module "public_path" as OHIF's production build emits it
_PUBLIC_PATH = '__webpack_require__.p = "/";'
_PUBLIC_PATH_RELATIVE = (
    "__webpack_require__.p = "
    '(typeof window === "object" && window.PUBLIC_URL) || '
    'new URL(".", self.location.href).pathname;'
)


class ViewerError(Exception):
    """The viewer bundle cannot be installed or is not usable."""


def installed(directory: Path) -> dict[str, Any] | None:
    """What :func:`install` recorded in ``directory``, or None when no bundle is there."""
    try:
        info = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not (directory / "index.html").is_file():
        return None
    return info


#: (files, absolute reference as built, relative replacement): webpack's runtime public
#: path; fonts referenced from the style sheets; icons in the web app manifest
_RELOCATIONS = (
    ("*.js", _PUBLIC_PATH, _PUBLIC_PATH_RELATIVE),
    ("*.css", "url(/", "url("),
    ("manifest.json", '"src": "/', '"src": "'),
)


def relocate(directory: Path) -> int:
    """Make the build load its chunks, workers, WebAssembly, fonts and icons relative to
    where it is served instead of from the site root; returns how many webpack runtimes
    were changed (0: not a build this knows how to move)."""
    runtimes = 0
    for pattern, built, relative in _RELOCATIONS:
        for path in directory.glob(pattern):
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            if built in text:
                text = text.replace(built, relative)
                path.write_text(text, encoding="utf-8", errors="surrogateescape")
                runtimes += built == _PUBLIC_PATH
    return runtimes


def _extract_dist(tarball: Path, into: Path) -> None:
    prefix = "package/dist/"
    with tarfile.open(tarball) as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            member.name = member.name[len(prefix) :]
            if member.name:
                members.append(member)
        if not members:
            raise ViewerError(f"{tarball.name} has no dist/ directory")
        tar.extractall(into, members=members, filter="data")


def install(
    directory: Path,
    version: str = OHIF_VERSION,
    *,
    npm: str = "npm",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Install OHIF ``version`` from the npm registry into ``directory`` (replacing any
    bundle there only once the new one is complete); returns what was recorded."""
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise ViewerError(
            "npm was not found: install Node.js (e.g. apt-get install npm), then run "
            f"'{INSTALL_COMMAND}' again"
        )
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{OHIF_PACKAGE}@{version}"
    with tempfile.TemporaryDirectory(prefix=".viewer-", dir=directory.parent) as tmp:
        work = Path(tmp)
        say(f"fetching {spec} from the npm registry ...")
        done = subprocess.run(
            [npm_path, "pack", spec, "--json", "--pack-destination", str(work)],
            capture_output=True,
            text=True,
            cwd=work,
        )
        if done.returncode != 0:
            raise ViewerError(f"npm pack {spec} failed: {done.stderr.strip()[-2000:]}")
        try:
            packed = json.loads(done.stdout)[0]
        except (ValueError, IndexError, KeyError) as exc:
            raise ViewerError(f"npm pack {spec}: unexpected output {done.stdout[:500]!r}") from exc
        staging = work / "dist"
        _extract_dist(work / packed["filename"], staging)
        if not (staging / "index.html").is_file():
            raise ViewerError(f"{spec} has no dist/index.html: not a prebuilt OHIF viewer")
        if relocate(staging) == 0:
            raise ViewerError(
                f"{spec}: webpack's public path was not found in its scripts; this OHIF "
                f"build cannot be served under /viewer (Pictor is tested with {OHIF_VERSION})"
            )
        info = {
            "package": OHIF_PACKAGE,
            "version": packed.get("version", version),
            "integrity": packed.get("integrity", ""),
        }
        (staging / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        old = work / "old"
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
    say(f"installed {spec} into {directory}")
    return info


# --------------------------------------------------------------------------------------
# what /viewer serves
# --------------------------------------------------------------------------------------

_ABSOLUTE_REF = re.compile(r'(\s(?:src|href|content)=")/(?!/)')
_PUBLIC_URL = re.compile(r'window\.PUBLIC_URL\s*=\s*"/"')


def relative_root(path: str) -> str:
    """From a page at ``/viewer/<path>``, the relative URL of ``/viewer/`` itself."""
    depth = path.lstrip("/").count("/")
    return "../" * depth or "./"


_BUTTON_STYLE = (
    "font:12px system-ui,sans-serif;padding:3px 10px;color:#e6e6e6;background:#14204a;"
    "border:1px solid #5a6bb0;border-radius:4px;cursor:pointer"
)


def index_html(template: str, path: str, *, signed_in: str | None = None) -> str:
    """OHIF's ``index.html`` for the deep link ``/viewer/<path>``: every reference to the
    bundle made relative, and ``window.PUBLIC_URL`` (OHIF's and webpack's base) computed
    in the browser as the absolute path of ``/viewer/`` as the browser sees it. For a
    person who signed in (``signed_in``: their name), a small sign-out button (OHIF has
    none without its own OIDC sign-in)."""
    root = relative_root(path)
    html = _ABSOLUTE_REF.sub(lambda m: m.group(1) + root, template)
    html = _PUBLIC_URL.sub(
        lambda _: f"window.PUBLIC_URL=new URL({json.dumps(root)},location.href).pathname", html
    )
    if signed_in is not None:
        who = escape(signed_in, quote=True)
        button = (
            f'<form id="pictor-sign-out" method="post" action="{root}../logout" '
            'style="position:fixed;right:6px;bottom:6px;z-index:2147483647;margin:0">'
            f'<button type="submit" title="Signed in as {who}" '
            f'style="{_BUTTON_STYLE}">Sign out</button></form>'
        )
        html = html.replace("</body>", button + "</body>", 1)
    return html


def ohif_config(*, omit_quotation: bool = True, upload: bool = True) -> dict[str, Any]:
    """OHIF's ``window.config`` for Pictor's DICOMweb service (roots filled in the browser).

    Options follow OHIF's DICOMweb data source: search with ``includefield`` and fuzzy
    or wildcard matching (PS3.18 10.6), metadata per series (``enableStudyLazyLoad``),
    pixel data as WADO-RS frames (``imageRendering: 'wadors'``: one request per frame,
    stored syntax with ``transfer-syntax=*``), thumbnails from the server's thumbnail
    resources (PS3.18 10.4.1.1.4), uploads by STOW-RS (``dicomUploadEnabled``).
    """
    return {
        "routerBasename": "/viewer",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "pictor",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "pictor",
                "configuration": {
                    "friendlyName": "Pictor",
                    "name": "pictor",
                    "wadoUriRoot": "",
                    "qidoRoot": "",
                    "wadoRoot": "",
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "video",
                    "bulkDataURI": {"enabled": True},
                    "omitQuotationForMultipartRequest": omit_quotation,
                    "dicomUploadEnabled": upload,
                },
            }
        ],
    }


#: with sign-in on: a DICOMweb answer of 401 (the session ended: idle or absolute
#: timeout, signed out elsewhere) sends the person to the sign-in form, which brings
#: them back to the page they were on, instead of OHIF's "Data Source Connection Error"
_SIGN_IN_AGAIN = (
    "  config.httpErrorHandler = function (error) {\n"
    "    if (!error || error.status !== 401) return;\n"
    "    var root = new URL('..', here).pathname;\n"
    "    var next = location.pathname.slice(root.length) + location.search;\n"
    "    location.assign(new URL('../login?next=' + encodeURIComponent(next), here).href);\n"
    "  };\n"
)
#: the same with the identity provider's sign-in: the token OHIF holds is no longer
#: accepted (expired, revoked), so it is dropped and the page reloaded; OHIF, holding
#: no user, sends the person to the provider, which brings them back here
_SIGN_IN_AGAIN_OIDC = (
    "  config.httpErrorHandler = function (error) {\n"
    "    if (!error || error.status !== 401 || window.__pictorSigningIn) return;\n"
    "    window.__pictorSigningIn = true;\n"
    "    [sessionStorage, localStorage].forEach(function (store) {\n"
    "      Object.keys(store).forEach(function (key) {\n"
    "        if (key.indexOf('oidc.user:') === 0) store.removeItem(key);\n"
    "      });\n"
    "    });\n"
    "    location.reload();\n"
    "  };\n"
)


def oidc_client(authority: str, client_id: str, scope: str) -> dict[str, Any]:
    """OHIF's ``oidc`` entry: OHIF signs the person in at ``authority`` itself
    (authorization code with PKCE, oidc-client-ts) and sends the access token as a
    bearer token. Its redirect URIs, relative to the viewer, are what the provider must
    have registered: ``<viewer>/callback`` and ``<viewer>/silent-refresh.html``; after
    sign-out, the page the person signed out from (``<viewer>/`` for the study list)."""
    return {
        "authority": authority,
        "client_id": client_id,
        "redirect_uri": "/callback",
        "silent_redirect_uri": "/silent-refresh.html",
        # OHIF routes this path (not made relative to its base) to its sign-out callback:
        # "/" would take OHIF's own /viewer/viewer route; the provider is sent back to
        # the page the person signed out from instead (OHIF's Logout passes it)
        "post_logout_redirect_uri": "/signed-out",
        "response_type": "code",
        "scope": scope,
        "automaticSilentRenew": True,
        "revokeAccessTokenOnSignout": True,
    }


#: with the identity provider's sign-in: a "Sign out" button (OHIF 3.13's own Logout
#: menu item navigates to its /logout route, which does not sign out) that drops the
#: tokens OHIF holds and ends the session at the provider (OpenID Connect RP-Initiated
#: Logout 1.0: its end_session_endpoint, with client_id and a post_logout_redirect_uri
#: of the viewer's root, which the provider must have registered)
_SIGN_OUT_OIDC = (
    "  window.addEventListener('DOMContentLoaded', function () {\n"
    "    var client = config.oidc[0];\n"
    "    var form = document.createElement('form');\n"
    "    form.id = 'pictor-sign-out';\n"
    "    form.style.cssText = 'position:fixed;right:6px;bottom:6px;z-index:2147483647;margin:0';\n"
    "    var button = document.createElement('button');\n"
    "    button.type = 'submit';\n"
    "    button.textContent = 'Sign out';\n"
    "    button.style.cssText = " + json.dumps(_BUTTON_STYLE) + ";\n"
    "    form.appendChild(button);\n"
    "    form.addEventListener('submit', function (event) {\n"
    "      event.preventDefault();\n"
    "      [sessionStorage, localStorage].forEach(function (store) {\n"
    "        Object.keys(store).forEach(function (key) {\n"
    "          if (key.indexOf('oidc.user:') === 0) store.removeItem(key);\n"
    "        });\n"
    "      });\n"
    "      var back = here.href;\n"
    "      var discovery = client.authority.replace(/\\/$/, '') +\n"
    "        '/.well-known/openid-configuration';\n"
    "      fetch(discovery).then(function (r) { return r.json(); }).then(function (meta) {\n"
    "        if (!meta.end_session_endpoint) throw new Error('no end_session_endpoint');\n"
    "        var end = new URL(meta.end_session_endpoint);\n"
    "        end.searchParams.set('client_id', client.client_id);\n"
    "        end.searchParams.set('post_logout_redirect_uri', back);\n"
    "        location.assign(end.href);\n"
    "      }).catch(function () { location.assign(back); });\n"
    "    });\n"
    "    document.body.appendChild(form);\n"
    "  });\n"
)


def _again(config: dict[str, Any], signs_in: bool) -> str:
    if not signs_in:
        return ""
    if config.get("oidc"):
        return _SIGN_IN_AGAIN_OIDC + _SIGN_OUT_OIDC
    return _SIGN_IN_AGAIN


def app_config_js(config: dict[str, Any], *, signs_in: bool = False) -> str:
    """``app-config.js``: ``config`` with the router base and the DICOMweb roots taken
    from the URL the browser loaded this script from (``<viewer>/app-config.js``; the
    service is at ``<viewer>/../dicom-web``)."""
    return (
        "// Generated by Pictor (app/viewer.py): OHIF reading this server's DICOMweb service.\n"
        "(function () {\n"
        "  var here = new URL('.', document.currentScript.src);\n"
        "  var dicomweb = new URL('../dicom-web', here).href;\n"
        f"  var config = {json.dumps(config, indent=2)};\n"
        "  config.routerBasename = here.pathname.replace(/\\/$/, '') || '/';\n"
        "  config.dataSources.forEach(function (source) {\n"
        "    var c = source.configuration;\n"
        "    c.wadoUriRoot = c.qidoRoot = c.wadoRoot = dicomweb;\n"
        "  });\n" + _again(config, signs_in) + "  window.config = config;\n"
        "})();\n"
    )
