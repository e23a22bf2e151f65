"""Rendered images and thumbnails (PS3.18 10.4.1.1.3, 8.3.5), against references computed
here from pydicom's pixel data and the VOI formulas of PS3.3 C.11.2.1.2."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from test_wado import parts

from conftest import Archive, multipart
from corpus import get_ref
from synth import ct_slice, new_uids


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output range 0..255."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


@pytest.fixture(scope="module")
def ct(archive: Archive) -> pydicom.Dataset:
    study, series = new_uids()
    data = [ct_slice(study, series, i) for i in range(3)]
    refs = [
        get_ref(n).path.read_bytes()
        for n in ("RG3_J2KI.dcm", "SC_rgb_small_odd.dcm", "emri_small_jpeg_ls_lossless.dcm")
    ]
    r = archive.stow(multipart(data + refs))
    assert r.status_code == 200, r.text
    return pydicom.dcmread(io.BytesIO(data[1]))


def url(ds: pydicom.Dataset, suffix: str = "") -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{suffix}"


def image(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_ct_png_applies_rescale_and_the_datasets_window(
    archive: Archive, ct: pydicom.Dataset
) -> None:
    r = archive.http.get(url(ct, "/rendered"), headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    want = np.round(linear_window(hu, float(ct.WindowCenter), float(ct.WindowWidth)))
    got = image(r).astype(float)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1


def test_window_override_and_jpeg_quality(archive: Archive, ct: pydicom.Dataset) -> None:
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    want = linear_window(hu, 400, 100)
    r = archive.http.get(url(ct, "/rendered?window=400,100,LINEAR"))
    assert r.headers["content-type"] == "image/jpeg"
    assert np.abs(image(r).astype(float) - want).mean() < 3  # JPEG is lossy
    small = archive.http.get(url(ct, "/rendered?quality=10"))
    big = archive.http.get(url(ct, "/rendered?quality=95"))
    assert len(small.content) < len(big.content)


def test_viewport_keeps_the_aspect_ratio(archive: Archive, ct: pydicom.Dataset) -> None:
    assert image(archive.http.get(url(ct, "/rendered?viewport=128,64"))).shape == (64, 64)


def test_monochrome1_is_inverted(archive: Archive, ct: pydicom.Dataset) -> None:
    ds = pydicom.dcmread(get_ref("RG3_J2KI.dcm").path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    got = image(archive.http.get(url(ds, "/rendered"), headers={"Accept": "image/png"})).astype(
        float
    )
    raw = ds.pixel_array.astype(float)
    # higher stored values must display darker
    assert np.corrcoef(got.ravel(), raw.ravel())[0, 1] < -0.9


def test_colour_is_exact_in_png(archive: Archive, ct: pydicom.Dataset) -> None:
    ds = pydicom.dcmread(get_ref("SC_rgb_small_odd.dcm").path)
    got = image(archive.http.get(url(ds, "/rendered"), headers={"Accept": "image/png"}))
    assert np.array_equal(got, ds.pixel_array)


def test_frames_rendered_and_study_rendered_are_multipart(
    archive: Archive, ct: pydicom.Dataset
) -> None:
    ds = pydicom.dcmread(get_ref("emri_small_jpeg_ls_lossless.dcm").path)
    r = archive.http.get(url(ds, "/frames/1,10/rendered"), headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        'multipart/related; type="image/png"'
    )
    images = [np.asarray(Image.open(io.BytesIO(body))) for _, body in parts(r)]
    assert len(images) == 2 and not np.array_equal(images[0], images[1])
    series = archive.http.get(
        f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/rendered"
    )
    assert len(parts(series)) == 3


def test_thumbnail_is_small_cached_and_representative(
    archive: Archive, ct: pydicom.Dataset
) -> None:
    r = archive.http.get(f"/studies/{ct.StudyInstanceUID}/thumbnail")
    thumb = image(r)
    assert max(thumb.shape) <= 128
    cached = list((archive.data_dir / "cache" / "thumbnails").glob(f"{ct.SOPInstanceUID}-*"))
    assert cached, "the middle instance of the series is the representative one"
    again = archive.http.get(f"/studies/{ct.StudyInstanceUID}/thumbnail")
    assert again.content == r.content
    assert image(archive.http.get(url(ct, "/thumbnail?viewport=64,64"))).shape == (64, 64)


@pytest.mark.parametrize(
    "suffix, status",
    [
        ("/rendered?window=abc", 400),
        ("/rendered?viewport=0,10", 400),
        ("/rendered?quality=101", 400),
        ("/rendered?window=nan,100", 400),
        ("/rendered?window=40,1e999", 400),  # infinite
        ("/frames/1,x/rendered", 400),
        ("/frames/9/rendered", 404),
    ],
)
def test_bad_rendering_parameters(
    archive: Archive, ct: pydicom.Dataset, suffix: str, status: int
) -> None:
    r = archive.http.get(url(ct, suffix))
    assert r.status_code == status and r.json()["message"]


def test_unacceptable_type_is_406(archive: Archive, ct: pydicom.Dataset) -> None:
    r = archive.http.get(url(ct, "/rendered"), headers={"Accept": "image/webp"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["message"]


def test_multiframe_instance_as_an_animated_gif(archive: Archive, ct: pydicom.Dataset) -> None:
    """image/gif of a multi-frame instance: one animated GIF with every frame (or the
    frames asked for), each the frame's own rendering (PS3.18 8.3.5)."""
    mr = pydicom.dcmread(get_ref("emri_small_jpeg_ls_lossless.dcm").path)
    count = int(mr.NumberOfFrames)
    r = archive.http.get(url(mr, "/rendered"), headers={"Accept": "image/gif"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.is_animated and gif.n_frames == count
    frames = []
    for k in range(count):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("L"), dtype=float))
    # the frames differ as the stored ones do: each is its own frame, in order
    stored = mr.pixel_array.astype(float)
    for k in (0, count // 2, count - 1):
        single = archive.http.get(
            url(mr, f"/frames/{k + 1}/rendered"), headers={"Accept": "image/png"}
        )
        assert np.abs(frames[k] - image(single).astype(float)).mean() < 2
    assert np.corrcoef(frames[0].ravel(), stored[0].ravel())[0, 1] > 0.9
    r = archive.http.get(url(mr, "/frames/1,3/rendered"), headers={"Accept": "image/gif"})
    assert Image.open(io.BytesIO(r.content)).n_frames == 2
    # a single-frame CT stays a plain GIF
    r = archive.http.get(url(ct, "/rendered"), headers={"Accept": "image/gif"})
    assert not getattr(Image.open(io.BytesIO(r.content)), "is_animated", False)


def test_accept_query_parameter_wins_over_the_header(archive: Archive, ct: pydicom.Dataset) -> None:
    """PS3.18 8.3.3.1: ``accept=`` in the query takes precedence; OHIF's thumbnail
    request sends a multipart Accept header with ``?accept=image/jpeg``."""
    multipart_accept = 'multipart/related; type="application/octet-stream"'
    r = archive.http.get(
        url(ct, "/thumbnail"), params={"accept": "image/jpeg"}, headers={"Accept": multipart_accept}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    r = archive.http.get(url(ct, "/rendered"), params={"accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    r = archive.http.get(url(ct, "/thumbnail"), headers={"Accept": multipart_accept})
    assert r.status_code == 406


def test_a_frame_of_a_large_native_multiframe_is_that_frame(archive: Archive) -> None:
    """A native frame too large to render in the server process goes to a codec worker,
    which reads the header and that frame's bytes (not the file): each frame of a
    MONOCHROME1 multi-frame is its own, windowed and inverted (PS3.3 C.7.6.3.1.2)."""
    study, series = new_uids()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(study, series, 0, rows=700, cols=600)))
    frames = [np.full((700, 600), 100 * k, dtype=np.int16) for k in range(3)]
    frames[1][:, :300] = 900  # left half brighter in the stored values
    ds.PixelData = b"".join(f.tobytes() for f in frames)
    ds.NumberOfFrames = 3
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 500, 1001
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert archive.stow(multipart([out.getvalue()])).status_code == 200
    for k, frame in enumerate(frames):
        got = image(archive.http.get(url(ds, f"/frames/{k + 1}/rendered?accept=image/png")))
        want = 255 - np.round(linear_window(frame.astype(float), 500, 1001))
        assert got.shape == (700, 600) and np.abs(got - want).max() <= 1, k
