"""Rendered images (PS3.18 8.3.5 and 10.4.1.1.3): a frame as JPEG / PNG / GIF for people.

Grayscale frames go through the Modality LUT (rescale), then the VOI LUT: the request's
``window=center,width[,function]`` if given, else the data set's window or VOI LUT
(PS3.3 C.11.2), else the frame's own range; MONOCHROME1 is inverted so that it displays
as intended. Colour frames (RGB, YBR) are converted to RGB. ``viewport=vw,vh`` fits the
image into that many pixels keeping its aspect ratio. Runs in worker processes.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from app.codec.transcode import PixelInfo, frame_array

#: media type -> Pillow format
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None
    quality: int = 90


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DS (WindowCenter can have several values)."""
    if isinstance(value, str) or not hasattr(value, "__getitem__"):
        return float(value)
    return float(value[0])


def _window_of(
    ds: pydicom.Dataset, window: tuple[float, float, str] | None
) -> tuple[float, float, str] | None:
    """The request's window, else the data set's first (PS3.3 C.11.2.1.2), else None."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth), function)
    return window


def _apply_window(values: np.ndarray, window: tuple[float, float, str]) -> np.ndarray:
    """Modality-LUT-applied values through a window, to 0..1 (PS3.3 C.11.2.1.2)."""
    center, width, function = window
    width = max(width, 1.0)
    if function == "SIGMOID":  # C.11.2.1.3.1
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":  # C.11.2.1.3.2
        low, high = center - width / 2, center + width / 2
    else:  # LINEAR, C.11.2.1.2.1
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)


def _to_display(scaled: np.ndarray, invert: bool) -> np.ndarray:
    """0..1 to 8-bit grey levels; MONOCHROME1 shows low values bright (C.7.6.3.1.2)."""
    if invert:
        scaled = 1.0 - scaled
    return np.round(scaled * 255).astype(np.uint8)


def _voi_lut(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """The first VOI LUT of the VOI LUT Sequence (C.11.2.1.1); it maps whole numbers, so
    non-integral Modality LUT output is rounded to them first."""
    if values.dtype.kind not in "iu":
        values = np.round(values).astype(np.int64)
    return np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)


def _voi(
    ds: pydicom.Dataset, values: np.ndarray, window: tuple[float, float, str] | None
) -> np.ndarray:
    """Modality-LUT-applied values to 0..1: the window, else the VOI LUT Sequence,
    else the values' own range (PS3.3 C.11.2)."""
    if window is not None:
        return _apply_window(values.astype(np.float64), window)
    if "VOILUTSequence" in ds:
        values = _voi_lut(ds, values)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    return (values - low) / max(high - low, 1e-9)


@functools.lru_cache(maxsize=64)
def _window_table(
    dtype: str, slope: float, intercept: float, window: tuple[float, float, str], invert: bool
) -> np.ndarray:
    """The display level of every value a frame of ``dtype`` can hold, for a rescale
    and a window: what most frames of a series share, so it is computed once."""
    values = _every_value(np.dtype(dtype))
    return _to_display(_apply_window(values * slope + intercept, window), invert)


def _every_value(dtype: np.dtype[Any]) -> np.ndarray:
    """Every value an integer ``dtype`` of 1 or 2 bytes holds, in the order of their
    unsigned codes (:func:`_codes`): the domain of a lookup table."""
    codes = np.arange(1 << (8 * dtype.itemsize), dtype=np.uint32)
    return codes.astype(f"<u{dtype.itemsize}").view(dtype)


def _gray_table(
    ds: pydicom.Dataset, frame: np.ndarray, window: tuple[float, float, str] | None, invert: bool
) -> np.ndarray:
    """A lookup table from a frame's stored values (as unsigned codes of the same
    width) to display levels: the Modality LUT, the VOI LUT and the inversion applied
    to each possible value once, instead of to each pixel (PS3.3 C.11.1, C.11.2)."""
    linear = "ModalityLUTSequence" not in ds
    slope = float(ds.get("RescaleSlope", 1) or 1) if linear else 1.0
    intercept = float(ds.get("RescaleIntercept", 0) or 0) if linear else 0.0
    if window is not None and linear:
        return _window_table(frame.dtype.str, slope, intercept, window, invert)
    modality = np.asarray(apply_modality_lut(_every_value(frame.dtype), ds))
    mapped = modality.astype(np.float64)
    if window is not None:
        return _to_display(_apply_window(mapped, window), invert)
    if "VOILUTSequence" in ds:
        mapped = _voi_lut(ds, modality)
    if linear and "VOILUTSequence" not in ds:  # monotonic: the frame's extremes suffice
        ends = mapped[_codes(np.array([frame.min(), frame.max()], frame.dtype))]
    else:
        ends = mapped[_codes(frame)]
    low, high = float(ends.min()), float(ends.max())
    scaled = np.clip((mapped - low) / max(high - low, 1e-9), 0.0, 1.0)
    return _to_display(scaled, invert)


def _codes(array: np.ndarray) -> np.ndarray:
    """Integer values as unsigned codes of the same width (indices into a table)."""
    return array.view(f"<u{array.dtype.itemsize}") if array.dtype.kind == "i" else array


def _gray(ds: pydicom.Dataset, frame: np.ndarray, options: RenderOptions) -> np.ndarray:
    """A grayscale frame's display levels (8-bit)."""
    window = _window_of(ds, options.window)
    invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if frame.dtype.kind in "iu" and frame.dtype.itemsize <= 2:
        frame = frame.astype(frame.dtype.newbyteorder("<"), copy=False)
        levels: np.ndarray = np.take(_gray_table(ds, frame, window, invert), _codes(frame))
        return levels  # np.take: half the time of indexing with the array
    # 32-bit and floating point pixel data: each pixel through the same steps
    return _to_display(_voi(ds, apply_modality_lut(frame, ds), window), invert)


def _image(ds: pydicom.Dataset, array: np.ndarray, options: RenderOptions) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # pydicom has converted YCbCr to RGB already (as_rgb)
        rgb = array[..., :3]
        if rgb.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8 * rgb.dtype.itemsize))
            rgb = rgb >> max(0, bits - 8)
        image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        rgb = apply_color_lut(array, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb / (rgb.max() or 1) * 255).astype(np.uint8)
        image = Image.fromarray(rgb, "RGB")
    else:
        image = Image.fromarray(_gray(ds, array, options), "L")
    if options.viewport is not None:
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    return image


def _encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    fmt = FORMATS[options.media_type]
    if fmt == "JPEG":
        image.save(out, fmt, quality=options.quality)
    else:
        image.save(out, fmt)
    return out.getvalue()


def render_frame(data: bytes, index: int, options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) of an instance (its bytes), rendered."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return _encode(_image(ds, pixel_array(ds, index=index), options), options)


def render_frame_bytes(head: bytes, frame: bytes, info: PixelInfo, options: RenderOptions) -> bytes:
    """One frame rendered from its own bytes (as stored) and the instance's header
    (the file up to its Pixel Data): no more of the file is read or parsed. Raises
    :class:`FrameMismatch` when the frame does not decode with ``info``."""
    ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
    return _encode(_image(ds, frame_array(frame, info), options), options)


#: frames at most in one animated GIF
MAX_ANIMATION_FRAMES = 1000


def _frame_time_ms(ds: pydicom.Dataset) -> int:
    """Display time of one frame: Frame Time (0018,1063), else Cine Rate (0018,0040),
    else Recommended Display Frame Rate (0008,2144); 100 ms if none (PS3.3 C.7.6.5)."""
    try:
        if "FrameTime" in ds and float(ds.FrameTime) > 0:
            return max(20, round(float(ds.FrameTime)))
        for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
            if keyword in ds and float(ds[keyword].value) > 0:
                return max(20, round(1000 / float(ds[keyword].value)))
    except (TypeError, ValueError):
        pass
    return 100


def render_animation(data: bytes, indices: list[int], options: RenderOptions) -> bytes:
    """Several frames (0-based) of a multi-frame instance (its bytes) as one animated
    GIF, played at the instance's own frame rate (the multi-frame rendered form of
    PS3.18 8.3.5)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    images = [_image(ds, pixel_array(ds, index=i), options) for i in indices[:MAX_ANIMATION_FRAMES]]
    out = io.BytesIO()
    images[0].save(
        out,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=_frame_time_ms(ds),
        loop=0,
    )
    return out.getvalue()
