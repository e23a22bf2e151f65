"""Every hot route gives the same answer through both doors (issue #14): the hot
dispatch below the framework (app.routes.HotDispatch) and the framework route
generated from the same table entry. Two applications in this process, one with the
hot dispatch and one without, on the index and storage of a real ``pictor serve``;
each request goes to both and status, headers and body must agree (multipart
boundaries aside), successes and errors alike.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.config import load_settings
from app.main import create_app
from app.routes import ROUTES

from conftest import Archive, embedded_dsn, multipart
from synth import ct_slice, new_uids, sop_instance_uid

STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def uids(archive: Archive) -> dict[str, str]:
    study, series = new_uids()
    files = [ct_slice(study, series, i, rows=32, cols=32, patient_id="DOORS") for i in range(2)]
    assert archive.stow(multipart(files)).status_code == 200
    return {"study": study, "series": series, "sop": sop_instance_uid(series, 0)}


def _requests(u: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    s, se, i = u["study"], u["series"], u["sop"]
    frames = f"/dicom-web/studies/{s}/series/{se}/instances/{i}/frames"
    out: list[tuple[str, dict[str, str]]] = []
    for path in (
        "/dicom-web/studies",
        "/dicom-web/series",
        "/dicom-web/instances",
        f"/dicom-web/studies/{s}/series",
        f"/dicom-web/studies/{s}/instances",
        f"/dicom-web/studies/{s}/series/{se}/instances",
    ):
        for query in (
            "?PatientID=DOORS",
            "?PatientID=DOORS&limit=1",  # more results: a Warning
            "?PatientID=DOORS&includefield=all",
            "?PatientName=D%C3%96E*&fuzzymatching=true",
            "?NoSuchAttribute=1",  # 400
            "?InstanceNumber=99999999999",  # 400 (or 400 for the level)
            "?PatientName=%00",
            "?StudyDate=%FF",
            "?limit=-1",
        ):
            out.append((path + query, {}))
        out.append((path + "?PatientID=DOORS", {"Accept": "image/png"}))  # 406
    out.append(("/dicom-web/studies/1.02/series", {}))  # a bad UID in the path: 400
    for tail in ("/1", "/2", "/1,1", "/0", "/x", "/99", "/1," + "1" * 20):
        out.append((frames + tail, {"Accept": STORED}))
    out.append((frames + "/1", {"Accept": "image/png"}))
    out.append((f"/dicom-web/studies/{s}/series/{se}/instances/9.9/frames/1", {"Accept": STORED}))
    out.append((f"/dicom-web/studies/{s}/series/{se}/instances/01.2/frames/1", {}))
    # rendered (PS3.18 10.4.1.1.3): the hot path takes one image; the rest is the route's
    instance = f"/dicom-web/studies/{s}/series/{se}/instances/{i}"
    for tail in (
        "/rendered",
        "/rendered?window=100,50",
        "/rendered?window=100,50,SIGMOID&viewport=16,8&quality=40",
        "/rendered?accept=image/png&window=1,2&window=3,4",  # the first value counts
        "/rendered?window=abc",  # 400
        "/rendered?window=nan,5",  # 400
        "/rendered?viewport=0,5",  # 400
        "/rendered?quality=101",  # 400
        "/frames/1/rendered",
        "/frames/1/rendered?accept=image/gif",
        "/frames/2/rendered",  # 404: one frame
        "/frames/0/rendered",  # 400
        "/frames/1,1/rendered",
    ):
        out.append((instance + tail, {}))
    out.append((instance + "/rendered", {"Accept": "image/png"}))
    out.append((instance + "/rendered", {"Accept": "text/html"}))  # 406
    out.append((f"/dicom-web/studies/{s}/series/{se}/instances/9.9/rendered", {}))  # 404
    out.append((f"/dicom-web/studies/{s}/series/{se}/instances/01.2/rendered", {}))  # 400
    return out


def _normalised(r: httpx.Response) -> tuple[int, str, str, bytes]:
    ctype = r.headers.get("content-type", "")
    body = r.content
    boundary = re.search(r"boundary=([^;\s]+)", ctype)
    if boundary:
        body = body.replace(boundary.group(1).encode(), b"BOUNDARY")
        ctype = ctype.replace(boundary.group(1), "BOUNDARY")
    return (
        r.status_code,
        ctype,
        r.headers.get("warning", "") + r.headers.get("cache-control", ""),
        body,
    )


@pytest.fixture(scope="module")
def doors(archive: Archive) -> Iterator[tuple[Any, Any]]:
    env = {
        "DATABASE_URL": embedded_dsn(archive.data_dir),
        "PICTOR_DATA_DIR": str(archive.data_dir),
    }
    settings = load_settings({}, env)
    yield create_app(settings, hot=True), create_app(settings, hot=False)


def test_every_hot_route_answers_alike_through_both_doors(
    doors: tuple[Any, Any], uids: dict[str, str]
) -> None:
    hot_names = {r.name for r in ROUTES if r.hot is not None}
    assert hot_names == {
        "qido-studies",
        "qido-series",
        "qido-instances",
        "qido-study-series",
        "qido-study-instances",
        "qido-series-instances",
        "wado-frames",
        "wado-instance-rendered",
        "wado-frames-rendered",
    }

    async def run() -> list[tuple[str, Any, Any]]:
        from litestar.testing import AsyncTestClient

        results = []
        async with (
            AsyncTestClient(doors[0], base_url="http://archive") as hot,
            AsyncTestClient(doors[1], base_url="http://archive") as framework,
        ):
            for path, headers in _requests(uids):
                a = await hot.get(path, headers=headers)
                b = await framework.get(path, headers=headers)
                results.append((path, _normalised(a), _normalised(b)))
        return results

    results = asyncio.run(run())
    statuses = {a[0] for _, a, _ in results}
    assert {200, 400, 404, 406} <= statuses  # successes and each kind of error were tried
    for path, a, b in results:
        assert a == b, path
