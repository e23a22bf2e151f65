"""What an HTTP request asks for, read from its method and path before any routing:
the action's name (the route's name where there is one, as in the metrics), the scope it
needs, and the study / series / instance it touches.

This table mirrors the routes of ``app/dicomweb`` (PS3.18 Table 10.4.1-1 / 10.6.1-2
resource paths). A path this table does not know needs ``read``; so a route added
later is guarded even before it is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.principal import ADMIN, READ, WRITE
from app.dicomweb.urls import DICOMWEB_PREFIX


@dataclass(frozen=True)
class Target:
    action: str
    #: scope needed; None: open to anyone (not audited)
    scope: str | None
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @property
    def is_search_everywhere(self) -> bool:
        """A QIDO search not confined to one study by its path."""
        return self.action in ("qido-studies", "qido-series", "qido-instances")


OPEN_HEALTH = Target("health", None)
OPEN_VIEWER = Target("viewer", None)
PREFLIGHT = Target("preflight", None)

_TOP = {"studies": "qido-studies", "series": "qido-series", "instances": "qido-instances"}
_STUDY_SUB = {
    "metadata": "wado-study-metadata",
    "series": "qido-study-series",
    "instances": "qido-study-instances",
    "rendered": "wado-study-rendered",
    "thumbnail": "wado-study-thumbnail",
}
_SERIES_SUB = {
    "metadata": "wado-series-metadata",
    "instances": "qido-series-instances",
    "rendered": "wado-series-rendered",
    "thumbnail": "wado-series-thumbnail",
}
_INSTANCE_SUB = {
    "metadata": "wado-instance-metadata",
    "rendered": "wado-instance-rendered",
    "thumbnail": "wado-instance-thumbnail",
}
_FRAME_SUB = {"rendered": "wado-frames-rendered", "thumbnail": "wado-frame-thumbnail"}


def classify(method: str, path: str) -> Target:
    if method == "OPTIONS":
        return PREFLIGHT  # CORS preflights carry no credentials (Fetch 4.8)
    if path == "/health":
        return OPEN_HEALTH
    if path == "/viewer" or path.startswith("/viewer/"):
        return OPEN_VIEWER  # the OHIF bundle: code and configuration, no patient data
    if path == "/metrics":
        return Target("metrics", ADMIN)
    if path.startswith("/admin/") or path == "/admin":
        return Target("admin-" + path[7:].split("/")[0], ADMIN)
    if path == "/IHEInvokeImageDisplay":
        return Target("iid", READ)
    if not path.startswith(DICOMWEB_PREFIX + "/"):
        return Target("other", READ)
    segs = path[len(DICOMWEB_PREFIX) + 1 :].rstrip("/").split("/")
    n = len(segs)
    study = segs[1] if n > 1 and segs[0] == "studies" else None
    if method == "POST":
        if study is not None and n == 2 or segs == ["studies"]:
            return Target("stow", WRITE, study)
        return Target("other", WRITE, study)
    if method not in ("GET", "HEAD"):
        return Target("other", ADMIN, study)  # changes other than STOW (e.g. a later DELETE)
    if n == 1:
        return Target(_TOP.get(segs[0], "other"), READ)
    if study is None:
        return Target("other", READ)
    if n == 2:
        return Target("wado-study", READ, study)
    if n == 3:
        return Target(_STUDY_SUB.get(segs[2], "other"), READ, study)
    series = segs[3] if segs[2] == "series" else None
    if series is None:
        return Target("other", READ, study)
    if n == 4:
        return Target("wado-series", READ, study, series)
    if n == 5:
        return Target(_SERIES_SUB.get(segs[4], "other"), READ, study, series)
    instance = segs[5] if segs[4] == "instances" else None
    if instance is None:
        return Target("other", READ, study, series)
    if n == 6:
        return Target("wado-instance", READ, study, series, instance)
    if n == 7:
        return Target(_INSTANCE_SUB.get(segs[6], "other"), READ, study, series, instance)
    if segs[6] == "frames":
        action = "wado-frames" if n == 8 else _FRAME_SUB.get(segs[8], "other")
        return Target(action, READ, study, series, instance)
    if segs[6] == "bulk":
        return Target("wado-bulk", READ, study, series, instance)
    return Target("other", READ, study, series, instance)
