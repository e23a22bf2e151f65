"""Rendered images (PS3.18 8.3.5 and 10.4.1.1.3): a frame as JPEG / PNG / GIF for people.

Grayscale frames go through the Modality LUT (rescale), then the VOI LUT: the request's
``window=center,width[,function]`` if given, else the data set's window or VOI LUT
(PS3.3 C.11.2), else the frame's own range; MONOCHROME1 is inverted so that it displays
as intended. Colour frames (RGB, YBR) are converted to RGB. ``viewport=vw,vh`` fits the
image into that many pixels keeping its aspect ratio. Runs in worker processes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

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


def _voi(
    ds: pydicom.Dataset, array: np.ndarray, window: tuple[float, float, str] | None
) -> np.ndarray:
    """Map a modality-LUT-applied frame to 0..1 (PS3.3 C.11.2.1.2)."""
    values = array.astype(np.float64)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth), function)
    if window is not None:
        center, width, function = window
        width = max(width, 1.0)
        if function == "SIGMOID":  # C.11.2.1.3.1
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function == "LINEAR_EXACT":  # C.11.2.1.3.2
            low, high = center - width / 2, center + width / 2
        else:  # LINEAR, C.11.2.1.2.1
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        return np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    if "VOILUTSequence" in ds:
        values = apply_voi_lut(array, ds, index=0).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    return (values - low) / max(high - low, 1e-9)


def _image(ds: pydicom.Dataset, array: np.ndarray, options: RenderOptions) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # pydicom has converted YCbCr to RGB already (as_rgb)
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB")
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        rgb = apply_color_lut(array, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb / (rgb.max() or 1) * 255).astype(np.uint8)
        image = Image.fromarray(rgb, "RGB")
    else:
        scaled = _voi(ds, apply_modality_lut(array, ds), options.window)
        if photometric == "MONOCHROME1":
            scaled = 1.0 - scaled
        image = Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L")
    if options.viewport is not None:
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    return image


def render_frame(data: bytes, index: int, options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) of an instance (its bytes), rendered."""
    ds = pydicom.dcmread(io.BytesIO(data))
    image = _image(ds, pixel_array(ds, index=index), options)
    out = io.BytesIO()
    fmt = FORMATS[options.media_type]
    if fmt == "JPEG":
        image.save(out, fmt, quality=options.quality)
    else:
        image.save(out, fmt)
    return out.getvalue()


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
