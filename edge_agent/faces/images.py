"""Images in, model tensors out: decoding, resizing and colour handling without heavy deps.

Face crops reach the gateway as raw GRAY8/RGB888 pixels or JPEG (protocol v1 FACE_CROP),
and enrolment photos as files. Raw pixels and binary/ASCII PNM files (PGM, PPM) are decoded
here with numpy; JPEG and PNG need Pillow, the optional ``jpeg`` extra, imported only when
such an image turns up. Images are ``uint8`` arrays, ``(h, w)`` for grey or ``(h, w, 3)``
in RGB order.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.faces.errors import ImageError
from firmware_bridge.protocol.v1 import FaceCrop, PixelFormat

Image = npt.NDArray[np.uint8]

MAX_PIXELS = 4096 * 4096
"""Largest image decoded (a photo for enrolment is cropped to the face anyway)."""

_PNM_HEADER = re.compile(rb"\A(P[2356])\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+")
_PNM_MAXVAL = re.compile(rb"\A(?:#[^\n]*\n\s*)*(\d+)\s")


def decode_image(data: bytes, source: str = "image") -> Image:
    """Decode PNM (P2/P3/P5/P6), or JPEG/PNG through Pillow, into a uint8 array.

    Raises:
        ImageError: Unknown or corrupt format, too large, or Pillow missing for JPEG/PNG.
    """
    if data[:2] in (b"P2", b"P3", b"P5", b"P6"):
        return _decode_pnm(data, source)
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        return _decode_pillow(data, source)
    raise ImageError(
        source, "not a PGM/PPM, JPEG or PNG image (raw pixels need --raw WIDTHxHEIGHT)"
    )


def read_image(path: Path) -> Image:
    """Read and decode an image file (see :func:`decode_image`).

    Raises:
        ImageError: The file is missing, unreadable or not a supported image.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(str(path), f"cannot read: {err.strerror}") from err
    return decode_image(data, str(path))


def from_raw(data: bytes, width: int, height: int, channels: int, source: str = "image") -> Image:
    """Wrap raw row-major pixels (1 channel grey or 3 channels RGB).

    Raises:
        ImageError: The byte count does not match the size.
    """
    if channels not in (1, 3) or width < 1 or height < 1:
        raise ImageError(source, f"raw image of {width}×{height}×{channels} is not supported")
    if len(data) != width * height * channels:
        raise ImageError(
            source,
            f"{width}×{height}×{channels} raw pixels need {width * height * channels} bytes, "
            f"got {len(data)}",
        )
    array = np.frombuffer(data, dtype=np.uint8)
    return array.reshape((height, width) if channels == 1 else (height, width, 3))


def decode_crop(crop: FaceCrop) -> Image:
    """Decode a reassembled FACE_CROP image.

    Raises:
        ImageError: The pixels do not decode or a JPEG's size differs from the header's.
    """
    source = f"crop {crop.crop_id} of stream {crop.stream_id}"
    if crop.pixel_format == PixelFormat.GRAY8:
        return from_raw(crop.data, crop.width, crop.height, 1, source)
    if crop.pixel_format == PixelFormat.RGB888:
        return from_raw(crop.data, crop.width, crop.height, 3, source)
    image = _decode_pillow(crop.data, source)
    if image.shape[:2] != (crop.height, crop.width):
        raise ImageError(
            source,
            f"JPEG is {image.shape[1]}×{image.shape[0]}, the frame says {crop.width}×{crop.height}",
        )
    return image


def encode_pnm(image: Image) -> bytes:
    """Encode as binary PGM (grey) or PPM (RGB): what the demo and tests write."""
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if array.ndim == 2:
        magic = b"P5"
    elif array.ndim == 3 and array.shape[2] == 3:
        magic = b"P6"
    else:
        raise ValueError(f"image must be (h, w) or (h, w, 3), got {array.shape}")
    header = b"%s\n%d %d\n255\n" % (magic, array.shape[1], array.shape[0])
    return header + array.tobytes()


def _decode_pnm(data: bytes, source: str) -> Image:
    head = _PNM_HEADER.match(data)
    if head is None:
        raise ImageError(source, "PNM header is malformed")
    magic, width, height = head.group(1), int(head.group(2)), int(head.group(3))
    rest = data[head.end() :]
    maxval_match = _PNM_MAXVAL.match(rest)
    if maxval_match is None:
        raise ImageError(source, "PNM header has no maximum value")
    maxval = int(maxval_match.group(1))
    if not 1 <= maxval <= 65535:
        raise ImageError(source, f"PNM maximum value {maxval} is out of range")
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise ImageError(source, f"image of {width}×{height} pixels is empty or too large")
    body = rest[maxval_match.end() :]
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        if len(body) < count * dtype.itemsize:
            raise ImageError(source, f"PNM pixel data is truncated ({len(body)} bytes)")
        values = np.frombuffer(body, dtype=dtype, count=count).astype(np.float64)
    else:
        try:
            values = np.array(body.split()[:count], dtype=np.float64)
        except ValueError as err:
            raise ImageError(source, "ASCII PNM holds something that is not a number") from err
        if len(values) < count:
            raise ImageError(source, f"ASCII PNM has {len(values)} of {count} values")
    if maxval != 255:
        values = values * (255.0 / maxval)
    pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return pixels.reshape((height, width) if channels == 1 else (height, width, 3))


def _decode_pillow(data: bytes, source: str) -> Image:
    try:
        from PIL import Image as PilImage
    except ImportError as err:
        raise ImageError(
            source,
            "JPEG/PNG needs Pillow: install the `jpeg` extra (pip install 'edge-agent[jpeg]'), "
            "or send GRAY8/RGB888 crops / PGM/PPM files",
        ) from err
    try:
        with PilImage.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise ImageError(source, f"image of {opened.width}×{opened.height} is too large")
            converted: Any = opened.convert("L" if opened.mode in ("L", "1", "I;16") else "RGB")
            return np.asarray(converted, dtype=np.uint8).copy()
    except ImageError:
        raise
    except Exception as err:  # Pillow raises many kinds on corrupt data
        raise ImageError(source, f"cannot decode: {err}") from err


def resize_bilinear(image: Image, width: int, height: int) -> npt.NDArray[np.float32]:
    """Resize with bilinear interpolation (pixel centres aligned); returns float32 pixels."""
    src = image.astype(np.float32)
    h, w = src.shape[:2]
    if (h, w) == (height, width):
        return src
    ys = np.clip((np.arange(height, dtype=np.float32) + 0.5) * (h / height) - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width, dtype=np.float32) + 0.5) * (w / width) - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    if src.ndim == 3:
        wy = wy[..., None]
        wx = wx[..., None]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
    bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    out: npt.NDArray[np.float32] = (top * (1 - wy) + bottom * wy).astype(np.float32)
    return out


def to_channels(pixels: npt.NDArray[np.float32], color_order: str) -> npt.NDArray[np.float32]:
    """Arrange ``(h, w)`` or ``(h, w, 3)`` RGB pixels as ``(h, w, c)`` in a model's order.

    Grey images are replicated for colour models; colour images become ITU-R BT.601 luma
    for grey models.
    """
    if pixels.ndim == 2:
        grey = pixels[..., None]
        return grey if color_order == "GRAY" else np.repeat(grey, 3, axis=2)
    if color_order == "GRAY":
        luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return luma[..., None].astype(np.float32)
    if color_order == "BGR":
        return np.ascontiguousarray(pixels[..., ::-1])
    return pixels
