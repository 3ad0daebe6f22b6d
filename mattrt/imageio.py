"""Reading images: the one place mattrt decodes image files (writing: mattrt/imagewrite.py).

Reading (`read_image`, `decode_image`, `read_alpha`) accepts PNG, JPEG (including camera MPO
files), WebP and TIFF through Pillow, at 8 or 16 bits per channel:

- the EXIF orientation is applied, so arrays come out the way a viewer shows the picture;
- greyscale, bilevel, palette, CMYK, YCbCr and premultiplied images are converted to RGB;
- an alpha channel (RGBA, LA, palette or tRNS transparency) is returned separately and never
  composited, so the caller decides what it means;
- 16-bit files stay 16 bit (uint16 arrays). Pillow has no 48/64-bit colour mode and would keep
  only the high byte of 16-bit RGB(A) PNG and TIFF files; mattrt decodes those twice through
  Pillow's own decoders, once for the high and once for the low byte of every sample, and joins
  them, so no precision is lost and no extra dependency is needed;
- colour values are returned as stored: embedded ICC profiles are not applied.

A decompression-bomb guard refuses images above `DEFAULT_MAX_PIXELS` (200 megapixels: an 8K
frame is 33 MP, 16K x 12K is 197 MP) before any pixel is decoded; pass `max_pixels` to raise
or lower it. Pillow's own global limit is not used (it would stop at ~179 MP and is process
wide); it is lifted only while a header is parsed, under a lock, and restored afterwards.

Writing is mattrt/imagewrite.py. Both share `quantise`, the one rule by which floats become
8- or 16-bit levels.

Every failure a user can cause (missing path, a directory, a corrupt or truncated file, a zero
size, an image over the pixel limit, values out of range) raises `InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from mattrt.errors import InputError

DEFAULT_MAX_PIXELS = 200_000_000
"""Largest image (width x height) read without raising `max_pixels`: 200 megapixels."""

READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
"""Pillow formats `read_image` opens; Pillow's JPEG opener also takes camera MPO files (format "MPO")."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
"""File suffixes treated as images when a folder is listed."""


_EXIF_ORIENTATION_TAG = 0x0112
_PILLOW_LIMIT_LOCK = threading.Lock()
_NATIVE_ORDER = "L" if sys.byteorder == "little" else "B"


@dataclass(frozen=True)
class LoadedImage:
    """An image as read from a file.

    rgb:        H x W x 3, uint8 (bit_depth 8) or uint16 (bit_depth 16), orientation applied.
    alpha:      H x W with rgb's dtype when the file had an alpha channel or transparency,
                else None. Never multiplied into rgb.
    bit_depth:  8 or 16.
    source:     the path (or the name given to `decode_image`).
    format:     Pillow's format name: PNG, JPEG, MPO, WEBP or TIFF.
    mode:       Pillow's mode of the stored image before conversion (e.g. "CMYK", "P", "I;16").
    orientation: the EXIF orientation that was applied (1 means none).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    source: str
    format: str
    mode: str
    orientation: int = 1

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.width, self.height

    def rgb_float(self) -> np.ndarray:
        """rgb as float32 in [0, 1]."""
        return to_float32(self.rgb)

    def alpha_float(self) -> np.ndarray | None:
        """alpha as float32 in [0, 1], or None."""
        return None if self.alpha is None else to_float32(self.alpha)


def pixel_count(pixels: int) -> str:
    """A pixel count for messages: megapixels from 0.1 MP up, else the exact count."""
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels:,} pixels"


def to_float32(array: np.ndarray) -> np.ndarray:
    """uint8 (/255) or uint16 (/65535) pixels as float32 in [0, 1].

    The division is done in float32 so that a 16-bit matte read back from disk gives exactly
    the float32 values that were quantised to write it (see `quantise`).
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    raise InputError(f"expected uint8 or uint16 pixels, got {array.dtype}")


def quantise(values: np.ndarray, bit_depth: int, what: str = "values") -> np.ndarray:
    """Float values in [0, 1] (or integer pixels) as uint8/uint16 pixels of `bit_depth`.

    Floats are rounded to the nearest level (round half to even): mattrt's one float-to-integer
    rule (kernels/stitch.cu's rintf and the foreground estimate use it too). uint8 input is exact
    at both depths (x257 for 16 bit); uint16 input is refused at 8 bit because it would lose precision.
    """
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    array = np.asarray(values)
    if array.dtype == np.uint8:
        return array.copy() if bit_depth == 8 else array.astype(np.uint16) * np.uint16(257)
    if array.dtype == np.uint16:
        if bit_depth == 8:
            raise InputError(f"{what}: uint16 data cannot be written at 8 bit without losing precision; "
                             "pass bit_depth=16 or convert it yourself")
        return array.copy()
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{what}: expected float values in [0, 1], uint8 or uint16, got dtype {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise InputError(f"{what}: contains NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise InputError(f"{what}: float values must lie in [0, 1], got [{array.min():.4g}, {array.max():.4g}]")
    top = 255 if bit_depth == 8 else 65535
    return np.rint(array * top).astype(np.uint8 if bit_depth == 8 else np.uint16)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a PNG, JPEG, WebP or TIFF file as RGB (uint8 or uint16) plus its alpha, if any.

    max_pixels: refuse images with more than this many pixels (None: no limit).
    """
    data, name = _read_file(path)
    return decode_image(data, name=name, max_pixels=max_pixels)


def decode_image(data: bytes, *, name: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Like `read_image`, from the bytes of an encoded file (e.g. an upload)."""
    planes = _decode_planes(data, name, max_pixels)
    array = planes.array
    if planes.bands == "F":
        raise InputError(f"{name}: a 32-bit floating-point image is not a colour picture; "
                         "read mattes like this one with read_alpha")
    if planes.bands in ("L", "LA"):
        rgb = np.repeat(array[..., :1], 3, axis=2)
    else:
        rgb = array[..., :3]
    alpha = array[..., -1] if planes.bands in ("LA", "RGBA") else None
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        bit_depth=planes.bit_depth,
        source=name,
        format=planes.format,
        mode=planes.mode,
        orientation=planes.orientation,
    )


def read_alpha(path: str | os.PathLike, *, channel: int | str = 0,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a matte (or trimap) as float32 H x W in [0, 1].

    8-bit files are divided by 255, 16-bit ones by 65535; 32-bit float TIFFs are taken as they
    are and must lie in [0, 1]. Greyscale files give their one channel; from colour files
    `channel` picks one: an index (default 0, the first), "alpha" for the alpha channel, or
    "auto" (see `read_matte`). The EXIF orientation is applied, as in `read_image`.
    """
    return read_matte(path, channel=channel, max_pixels=max_pixels)[0]


def read_matte(path: str | os.PathLike, *, channel: int | str = "auto",
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Like `read_alpha`, also saying which plane was read: "grey", "alpha" or "channel N".

    channel "auto" reads the alpha channel of a file that has one (an RGBA cutout's matte is
    its alpha, not its red channel), the grey plane of a greyscale file, and the common plane
    of a colour file whose channels are equal; it refuses other colour files rather than
    guess a channel.
    """
    data, name = _read_file(path)
    planes = _decode_planes(data, name, max_pixels)
    array = planes.array
    channels = array.shape[2]
    if channel == "auto":
        if planes.bands in ("LA", "RGBA"):
            channel = "alpha"
        elif channels > 1 and not all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, channels)):
            raise InputError(f"{name}: a colour image without an alpha channel is not a matte; "
                             "name the channel to read (eval: --pred-channel N)")
        else:
            channel = 0
    if channel == "alpha":
        if planes.bands not in ("LA", "RGBA"):
            raise InputError(f"{name}: has no alpha channel (mode {planes.mode}); read channel 0 instead")
        index, used = channels - 1, "alpha"
    elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not 0 <= int(channel) < channels:
            raise InputError(f"{name}: channel {channel} does not exist; the image has {channels} "
                             f"channel(s) ({planes.bands})")
        index = int(channel)
        used = "grey" if planes.bands in ("L", "F") else f"channel {index}"
    else:
        raise InputError(f"channel must be a channel index, 'alpha' or 'auto', got {channel!r}")
    plane = array[..., index]
    if plane.dtype == np.float32:
        if not np.isfinite(plane).all():
            raise InputError(f"{name}: the float matte contains NaN or infinite values")
        low, high = float(plane.min()), float(plane.max())
        if low < 0 or high > 1:
            raise InputError(f"{name}: a float matte must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
        return np.ascontiguousarray(plane), used
    return to_float32(np.ascontiguousarray(plane)), used


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files (by suffix, see IMAGE_SUFFIXES) directly inside `folder`, sorted.

    Links named like images are listed even when they lead nowhere (a missing target, a loop),
    so that reading them reports the problem instead of the file vanishing from the count.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class _Planes:
    array: np.ndarray  # H x W x C: uint8, uint16, or float32 (bands "F")
    bands: str  # "L", "LA", "RGB", "RGBA" or "F"
    bit_depth: int
    format: str
    mode: str
    orientation: int


def _read_file(path: str | os.PathLike) -> tuple[bytes, str]:
    try:
        path = Path(path)
    except TypeError:
        raise InputError(f"expected a file path, got {type(path).__name__}") from None
    name = str(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{name}: a symbolic link that leads to no file (its target is missing, or the "
                             "links form a loop)")
        raise InputError(f"{name}: no such file")
    if path.is_dir():
        raise InputError(f"{name}: is a folder, expected an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise InputError(f"{name}: the file is empty")
    return data, name


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    # Pillow checks its process-wide MAX_IMAGE_PIXELS inside Image.open; mattrt applies its own
    # per-call limit right after the header is parsed, so Pillow's is lifted only meanwhile.
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    try:
        with _pillow_limit_lifted():
            image = Image.open(io.BytesIO(data), formats=list(READ_FORMATS))
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable PNG, JPEG, WebP or TIFF file (unknown format, "
                         "or a corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise InputError(f"{name}: corrupt image header ({exc})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: the image has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{name}: {width}x{height} = {pixel_count(width * height)} exceeds the limit of "
            f"{pixel_count(max_pixels)} (a guard against decompression bombs); if the image is genuine, "
            "raise the limit (--max-pixels on the command line, max_pixels in Python)")
    return image


def _load(image: Image.Image, name: str) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone in this process told Pillow to pad truncated files with grey; a matte computed
        # from such padding is silently wrong, so mattrt insists on complete files.
        raise InputError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; mattrt refuses to read images while "
                         "truncated files would be padded silently. Unset it.")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as exc:
        raise InputError(f"{name}: corrupt or truncated image data ({exc})") from exc


def _rawmode(tile: ImageFile._Tile) -> str | None:
    args = tile.args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(tile: ImageFile._Tile, rawmode: str) -> ImageFile._Tile:
    args = rawmode if isinstance(tile.args, str) else (rawmode, *tile.args[1:])
    return ImageFile._Tile(tile.codec_name, tile.extents, tile.offset, args)


def _low_byte_rawmode(rawmode: str) -> str | None:
    """For a 16-bit colour rawmode that unpacks the high byte, the one that unpacks the low byte."""
    for base in ("RGBA;16", "RGB;16"):
        if rawmode.startswith(base) and len(rawmode) == len(base) + 1:
            order = rawmode[-1]
            order = _NATIVE_ORDER if order == "N" else order
            if order in "LB":
                return base + ("B" if order == "L" else "L")
    return None


def _decode_planes(data: bytes, name: str, max_pixels: int | None) -> _Planes:
    image = _open(data, name, max_pixels)
    fmt = image.format or "?"
    _check_data_size(data, name, image)
    mode = image.mode
    tiles = list(image.tile)
    rawmodes = {_rawmode(t) for t in tiles}
    rawmode = rawmodes.pop() if len(rawmodes) == 1 else None
    bit_depth = 8

    if rawmode is not None and _low_byte_rawmode(rawmode) is not None:
        # 16-bit RGB(A): Pillow's decoders keep one byte per sample; run them for both bytes.
        _load(image, name)
        high = np.asarray(image)
        low = _decode_low_bytes(data, name, max_pixels, _low_byte_rawmode(rawmode))
        bands = image.mode
        if low is None:
            array = high
        else:
            array, bit_depth = (high.astype(np.uint16) << 8) | low.astype(np.uint16), 16
            transparency = image.info.get("transparency")
            if bands == "RGB" and isinstance(transparency, tuple) and len(transparency) == 3:
                key = (array == np.asarray(transparency, dtype=np.uint16)).all(axis=-1)
                array, bands = _with_key_alpha(array, key, 65535), "RGBA"
    elif rawmode == "LA;16B":
        # 16-bit grey + alpha PNG (Pillow would give 8-bit RGBA): unpack the raw bytes as RGBA,
        # which are high/low of grey then high/low of alpha.
        image.tile = [_with_rawmode(t, "RGBA") for t in tiles]
        _load(image, name)
        raw = np.asarray(image).astype(np.uint16)
        array = np.stack([(raw[..., 0] << 8) | raw[..., 1], (raw[..., 2] << 8) | raw[..., 3]], axis=-1)
        bands, bit_depth = "LA", 16
    else:
        _load(image, name)
        array, bands, bit_depth = _planes_from_mode(image, name)

    orientation = _exif_orientation(image)
    array = _orient(array, orientation)
    if array.ndim == 2:
        array = array[..., None]
    return _Planes(np.ascontiguousarray(array), bands, bit_depth, fmt, mode, orientation)


# Deflate codes at best a 258-byte match in one bit for its length and one for its distance, so
# no zlib stream inflates more than 1032-fold; JPEG's Huffman coding spends at least one bit on
# the DC coefficient of every 8x8 block of the full-resolution component.
_JPEG_HUFFMAN_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 24


def _check_data_size(data: bytes, name: str, image: Image.Image) -> None:
    """Refuse, before decoding, files whose data cannot fill the pixels their header promises.

    Pillow's PNG decoder stops quietly where a well-formed zlib stream ends and leaves the
    missing rows black; a few kilobytes claiming a 14000 x 14000 image would also cost a
    196-megapixel decode and a matte of nothing. So:

    - PNG: the image data (IDAT) is inflated once without keeping it (16 MB at a time) and must
      give exactly the bytes the header needs (rows x (filter byte + row bytes), per Adam7 pass
      when interlaced). Exact, so a flat image compressed near deflate's 1032:1 ceiling (a
      3000 x 3000 grey PNG is 1026:1) still reads. A small file stops after its few bytes.
    - JPEG (Huffman-coded): every 8x8 block codes its DC coefficient in at least one bit, so a
      file under ceil(W/8) x ceil(H/8) bits cannot be complete (the flattest JPEGs Pillow
      writes use 2 bits per block). Arithmetic-coded JPEGs have no such bound and are not checked.
    - WebP (libwebp) and TIFF (Pillow, libtiff) report missing data themselves; lossless WebP
      codes a flat image in a few hundred bytes at any size, so no ratio bound would be sound.
    """
    if image.format == "PNG":
        _check_png_data(data, name, image)
    elif image.format in ("JPEG", "MPO"):
        _check_jpeg_size(data, name, image)


def _check_png_data(data: bytes, name: str, image: Image.Image) -> None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return  # not the layout the PNG standard requires; Pillow's decoder judges it
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _PNG_CHANNELS.get(colour_type)
    if channels is None or (width, height) != image.size:
        return  # Pillow parsed a header this reader does not know; it checks its own
    bits = depth * channels
    if interlace:
        passes = []
        for x0, y0, dx, dy in _ADAM7:
            pass_w, pass_h = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
            passes.append((pass_h, 0 if pass_w == 0 else 1 + (pass_w * bits + 7) // 8))
    else:
        passes = [(height, 1 + (width * bits + 7) // 8)]
    expected = sum(rows * row_bytes for rows, row_bytes in passes if row_bytes)
    inflater = zlib.decompressobj()
    produced = 0
    position = 8
    try:
        while position + 8 <= len(data) and produced < expected:
            length, kind = struct.unpack(">I4s", data[position:position + 8])
            if kind == b"IDAT":
                pending = data[position + 8:position + 8 + length]
                while pending and produced < expected:
                    produced += len(inflater.decompress(pending, _INFLATE_STEP))
                    pending = inflater.unconsumed_tail
            elif kind == b"IEND":
                break
            position += 12 + length
    except zlib.error as exc:
        raise InputError(f"{name}: corrupt PNG image data ({exc})") from exc
    if produced >= expected:
        return
    if interlace:
        raise InputError(f"{name}: the PNG's pixel data ends early ({produced} of {expected} bytes of an "
                         f"interlaced {width}x{height} image); the file is truncated or its header is wrong")
    raise InputError(f"{name}: the PNG's pixel data ends after {produced // passes[0][1]} of {height} rows "
                     f"({width}x{height} promised); the file is truncated or its header is wrong")


def _check_jpeg_size(data: bytes, name: str, image: Image.Image) -> None:
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: no frame header before it
            return
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _JPEG_HUFFMAN_SOF:
                return
            break
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    else:
        return
    width, height = image.size
    blocks = -(-width // 8) * -(-height // 8)
    if len(data) * 8 < blocks:
        raise InputError(f"{name}: {len(data)} bytes cannot hold a {width}x{height} JPEG (it needs at least "
                         f"{-(-blocks // 8)} bytes: one bit per 8x8 block); the file is truncated or its "
                         "header is wrong")


def _decode_low_bytes(data: bytes, name: str, max_pixels: int | None, rawmode: str) -> np.ndarray | None:
    second = _open(data, name, max_pixels)
    second.tile = [_with_rawmode(t, rawmode) for t in second.tile]
    try:
        second.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        # The first pass decoded the same bytes, so this is Pillow refusing the low-byte unpacker
        # (a Pillow change), not a broken file: keep the high bytes rather than fail.
        warnings.warn(f"{name}: could not decode the low byte of 16-bit samples ({exc}); "
                      "read at 8 bit", RuntimeWarning, stacklevel=4)
        return None
    return np.asarray(second)


def _planes_from_mode(image: Image.Image, name: str) -> tuple[np.ndarray, str, int]:
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode == "1":
        return np.asarray(image.convert("L")), "L", 8
    if mode == "L":
        array = np.asarray(image)
        if isinstance(transparency, int):
            return _with_key_alpha(array, array == transparency, 255), "LA", 8
        return array, "L", 8
    if mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint16)
        if isinstance(transparency, int):
            return _with_key_alpha(array, array == transparency, 65535), "LA", 16
        return array, "L", 16
    if mode == "I":
        array = np.asarray(image)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InputError(f"{name}: 32-bit integer pixels in [{low}, {high}] do not fit 16 bit; "
                             "mattrt reads 8- and 16-bit images")
        return array.astype(np.uint16), "L", 16
    if mode == "F":
        return np.asarray(image).astype(np.float32), "F", 32
    if mode in ("LA", "La"):
        return np.asarray(image.convert("LA") if mode == "La" else image), "LA", 8
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        target = "RGBA" if has_alpha else "RGB"
        return np.asarray(image.convert(target)), target, 8
    if mode in ("RGBA", "RGBa"):
        return np.asarray(image.convert("RGBA") if mode == "RGBa" else image), "RGBA", 8
    if mode == "RGB":
        array = np.asarray(image)
        if isinstance(transparency, tuple) and len(transparency) == 3:
            key = (array == np.asarray(transparency, dtype=array.dtype)).all(axis=-1)
            return _with_key_alpha(array, key, 255), "RGBA", 8
        return array, "RGB", 8
    try:
        return np.asarray(image.convert("RGB")), "RGB", 8
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: Pillow mode {mode} cannot be converted to RGB ({exc})") from exc


def _with_key_alpha(array: np.ndarray, transparent: np.ndarray, opaque: int) -> np.ndarray:
    alpha = np.where(transparent, 0, opaque).astype(array.dtype)
    if array.ndim == 2:
        array = array[..., None]
    return np.concatenate([array, alpha[..., None]], axis=-1)


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block must not make the pixels unreadable
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an H x W (x C) array, as ImageOps.exif_transpose does."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "READ_FORMATS", "LoadedImage", "decode_image", "list_images",
           "pixel_count", "quantise", "read_alpha", "read_image", "read_matte", "to_float32"]
