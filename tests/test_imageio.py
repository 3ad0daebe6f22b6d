"""mattrt.imageio: every file kind it reads, its guards and its writers."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from mattrt import imageio, imagewrite
from mattrt.errors import InputError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_by_hand(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written without Pillow (filter 0), so that headers can claim anything."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw_rows))
            + _png_chunk(b"IEND", b""))


def _tiff16_by_hand(pixels: np.ndarray, big_endian: bool, deflate: bool) -> bytes:
    """A one-strip 16-bit RGB(A) TIFF, uncompressed or Adobe-deflate (Pillow cannot write these)."""
    height, width, channels = pixels.shape
    order = ">" if big_endian else "<"
    data = pixels.astype(order + "u2").tobytes()
    if deflate:
        data = zlib.compress(data)
    entries = {256: (3, 1, width), 257: (3, 1, height), 258: (3, channels, None), 259: (3, 1, 8 if deflate else 1),
               262: (3, 1, 2), 273: (4, 1, None), 277: (3, 1, channels), 278: (3, 1, height), 279: (4, 1, len(data))}
    if channels == 4:
        entries[338] = (3, 1, 2)  # unassociated alpha
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    bits = struct.pack(order + "H" * channels, *([16] * channels))
    data_offset = bits_offset + len(bits)
    out = bytearray((b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, ifd_offset))
    out += struct.pack(order + "H", len(entries))
    for tag in sorted(entries):
        kind, count, value = entries[tag]
        value = {258: bits_offset, 273: data_offset}.get(tag, value)
        if kind == 3 and count == 1:
            out += struct.pack(order + "HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack(order + "HHII", tag, kind, count, value)
    return bytes(out + struct.pack(order + "I", 0) + bits + data)


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def _pattern(height: int = 24, width: int = 32) -> np.ndarray:
    """An asymmetric 8-bit RGB pattern (every orientation changes it)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 256], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix, options", [(".png", {}), (".tif", {}), (".webp", {"lossless": True})])
def test_lossless_8bit_rgb_round_trips_exactly(tmp_path, suffix, options):
    pixels = _pattern()
    path = _save(tmp_path / f"a{suffix}", Image.fromarray(pixels), **options)
    loaded = imageio.read_image(path)
    assert loaded.bit_depth == 8 and loaded.rgb.dtype == np.uint8 and loaded.alpha is None
    assert loaded.size == (32, 24) and loaded.rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(loaded.rgb, pixels)
    assert loaded.source == str(path)


def test_jpeg_reads_close_to_the_source(tmp_path):
    pixels = _pattern()
    path = _save(tmp_path / "a.jpg", Image.fromarray(pixels), quality=98, subsampling=0)
    loaded = imageio.read_image(path)
    assert loaded.format == "JPEG" and loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb, np.asarray(Image.open(path)))
    assert np.abs(loaded.rgb.astype(int) - pixels).mean() < 4


def test_greyscale_and_bilevel_become_rgb(tmp_path):
    grey = _pattern()[..., 0]
    loaded = imageio.read_image(_save(tmp_path / "g.png", Image.fromarray(grey)))
    assert loaded.mode == "L" and loaded.alpha is None
    np.testing.assert_array_equal(loaded.rgb, np.repeat(grey[..., None], 3, axis=2))
    bits = Image.fromarray(grey > 128)
    loaded = imageio.read_image(_save(tmp_path / "b.png", bits))
    np.testing.assert_array_equal(loaded.rgb[..., 1], np.where(grey > 128, 255, 0))


def test_alpha_is_returned_separately_and_not_composited(tmp_path):
    rgb = _pattern()
    alpha = _rng().integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    path = _save(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, alpha])))
    loaded = imageio.read_image(path)
    np.testing.assert_array_equal(loaded.rgb, rgb)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_allclose(loaded.alpha_float(), alpha / 255.0, atol=1e-7)
    grey_alpha = Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode=None)
    loaded = imageio.read_image(_save(tmp_path / "la.png", grey_alpha))
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_array_equal(loaded.rgb[..., 2], rgb[..., 0])


def test_palette_with_transparency_gives_rgb_and_alpha(tmp_path):
    image = Image.new("P", (6, 4))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    indices = np.array([[0, 1, 2, 0, 1, 2]] * 4, dtype=np.uint8)
    image.putdata(indices.ravel().tolist())
    path = _save(tmp_path / "p.png", image, transparency=1)
    loaded = imageio.read_image(path)
    assert loaded.mode == "P" and loaded.bit_depth == 8
    np.testing.assert_array_equal(loaded.rgb[0, :3], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    np.testing.assert_array_equal(loaded.alpha, np.where(indices == 1, 0, 255))
    opaque = imageio.read_image(_save(tmp_path / "q.png", image))
    assert opaque.alpha is None


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.fromarray(_pattern()).convert("CMYK")
    path = _save(tmp_path / "c.jpg", cmyk, quality=98)
    loaded = imageio.read_image(path)
    assert loaded.mode == "CMYK" and loaded.rgb.shape == (24, 32, 3) and loaded.alpha is None
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert np.abs(loaded.rgb.astype(int) - _pattern()).mean() < 6


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_greyscale_stays_16bit(tmp_path, suffix):
    grey = _rng(1).integers(0, 65536, (9, 13), dtype=np.uint16)
    path = _save(tmp_path / f"g16{suffix}", Image.fromarray(grey))
    loaded = imageio.read_image(path)
    assert loaded.bit_depth == 16 and loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb[..., 0], grey)
    np.testing.assert_array_equal(imageio.read_alpha(path), grey.astype(np.float32) / np.float32(65535))


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_keeps_both_bytes(tmp_path, channels):
    pixels = _rng(2).integers(0, 65536, (7, 11, channels), dtype=np.uint16)
    path = tmp_path / "c16.png"
    path.write_bytes(imagewrite.encode_png16(pixels))
    loaded = imageio.read_image(path)
    assert loaded.bit_depth == 16 and loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb, pixels[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, pixels[..., 3])
    else:
        assert loaded.alpha is None
    # Pillow alone would keep only the high byte:
    np.testing.assert_array_equal(np.asarray(Image.open(path))[..., :3], (pixels[..., :3] >> 8).astype(np.uint8))


def test_16bit_grey_alpha_png_keeps_both_bytes(tmp_path):
    pixels = _rng(3).integers(0, 65536, (5, 6, 2), dtype=np.uint16)
    rows = pixels.astype(">u2").reshape(5, 12).view(np.uint8)
    data = b"".join(b"\x00" + row.tobytes() for row in rows)
    path = tmp_path / "la16.png"
    path.write_bytes(_png_by_hand(6, 5, 16, 4, data))
    loaded = imageio.read_image(path)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.rgb[..., 1], pixels[..., 0])
    np.testing.assert_array_equal(loaded.alpha, pixels[..., 1])


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_tiff_keeps_both_bytes(tmp_path, big_endian, deflate, channels):
    pixels = _rng(4).integers(0, 65536, (6, 9, channels), dtype=np.uint16)
    path = tmp_path / "c16.tif"
    path.write_bytes(_tiff16_by_hand(pixels, big_endian, deflate))
    loaded = imageio.read_image(path)
    assert loaded.bit_depth == 16 and loaded.format == "TIFF"
    np.testing.assert_array_equal(loaded.rgb, pixels[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, pixels[..., 3])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    image = Image.fromarray(_pattern())
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "o.png", image, exif=exif)
    loaded = imageio.read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert loaded.orientation == orientation
    np.testing.assert_array_equal(loaded.rgb, expected)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    image = Image.fromarray(_pattern(16, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    path = _save(tmp_path / "r.jpg", image, exif=exif, quality=95)
    loaded = imageio.read_image(path)
    assert loaded.rgb.shape == (40, 16, 3)
    stored = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(loaded.rgb, np.rot90(stored, k=-1))
    alpha_path = _save(tmp_path / "ra.png", Image.fromarray(_pattern(16, 40)[..., 0]), exif=exif)
    assert imageio.read_alpha(alpha_path).shape == (40, 16)


def test_one_pixel_image(tmp_path):
    path = _save(tmp_path / "one.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    loaded = imageio.read_image(path)
    assert loaded.rgb.shape == (1, 1, 3) and loaded.rgb.tolist() == [[[10, 20, 30]]]


def test_decode_image_from_bytes():
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="PNG")
    loaded = imageio.decode_image(buffer.getvalue(), name="upload")
    np.testing.assert_array_equal(loaded.rgb, _pattern())
    assert loaded.source == "upload"


# ---------------------------------------------------------------------------------- read errors


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_file_is_an_input_error(tmp_path, suffix, fmt):
    noise = _rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: data spans the file
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut"):
        imageio.read_image(path)


def test_truncated_images_setting_is_refused(tmp_path, monkeypatch):
    path = _save(tmp_path / "ok.png", Image.fromarray(_pattern()))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="LOAD_TRUNCATED_IMAGES"):
        imageio.read_image(path)


def test_garbage_empty_missing_and_folder_are_input_errors(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match="not a readable"):
        imageio.read_image(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        imageio.read_image(empty)
    with pytest.raises(InputError, match="no such file"):
        imageio.read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="folder"):
        imageio.read_image(tmp_path)


def test_unsupported_format_is_refused(tmp_path):
    path = _save(tmp_path / "a.bmp", Image.fromarray(_pattern()))
    with pytest.raises(InputError, match="PNG, JPEG, WebP or TIFF"):
        imageio.read_image(path)


def test_zero_size_header_is_an_input_error(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(_png_by_hand(0, 10, 8, 0, b""))
    with pytest.raises(InputError, match="zero size|corrupt"):
        imageio.read_image(path)


def test_gigantic_declared_size_is_refused_before_decoding(tmp_path):
    # 100000 x 100000 = 10 gigapixels claimed by a 60-byte file.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_by_hand(100_000, 100_000, 8, 0, b"\x00"))
    saved_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="exceeds the limit of 200.0 megapixels"):
        imageio.read_image(path)
    assert Image.MAX_IMAGE_PIXELS == saved_limit  # Pillow's global is left as it was


def test_pixel_limit_can_be_lowered_and_raised(tmp_path):
    path = _save(tmp_path / "a.png", Image.fromarray(_pattern()))  # 768 pixels
    with pytest.raises(InputError, match="768 pixels exceeds the limit of 700 pixels.*--max-pixels"):
        imageio.read_image(path, max_pixels=700)
    assert imageio.read_image(path, max_pixels=768).size == (32, 24)
    assert imageio.read_alpha(path, max_pixels=None).shape == (24, 32)


def test_limit_above_pillows_own_is_honoured(tmp_path, monkeypatch):
    path = _save(tmp_path / "a.png", Image.fromarray(_pattern()))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse 768 pixels
    assert imageio.read_image(path).size == (32, 24)
    assert Image.MAX_IMAGE_PIXELS == 100


# --------------------------------------------------------------------------------------- alpha


def test_read_alpha_channels_and_float_tiff(tmp_path):
    rgb = _pattern()
    alpha = _rng(6).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    path = _save(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, alpha])))
    np.testing.assert_array_equal(imageio.read_alpha(path), rgb[..., 0].astype(np.float32) / 255)
    np.testing.assert_array_equal(imageio.read_alpha(path, channel=2), rgb[..., 2].astype(np.float32) / 255)
    np.testing.assert_array_equal(imageio.read_alpha(path, channel="alpha"), alpha.astype(np.float32) / 255)
    with pytest.raises(InputError, match="channel 4 does not exist"):
        imageio.read_alpha(path, channel=4)
    grey = _save(tmp_path / "g.png", Image.fromarray(rgb[..., 1]))
    with pytest.raises(InputError, match="no alpha channel"):
        imageio.read_alpha(grey, channel="alpha")

    matte = _rng(7).random((5, 8)).astype(np.float32)
    float_path = _save(tmp_path / "f.tif", Image.fromarray(matte))
    np.testing.assert_array_equal(imageio.read_alpha(float_path), matte)
    with pytest.raises(InputError, match="read_alpha"):
        imageio.read_image(float_path)
    bad = _save(tmp_path / "bad.tif", Image.fromarray(matte * 3))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        imageio.read_alpha(bad)


# ------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_write_alpha_round_trips(tmp_path, suffix, bit_depth):
    alpha = _rng(8).random((10, 14)).astype(np.float32)
    path = imagewrite.write_alpha(tmp_path / f"a{suffix}", alpha, bit_depth=bit_depth)
    back = imageio.read_alpha(path)
    top = 2 ** bit_depth - 1
    np.testing.assert_array_equal(back, np.rint(alpha * top).astype(np.float32) / np.float32(top))
    assert imageio.read_image(path).bit_depth == bit_depth


def test_write_alpha_16bit_levels_are_exact(tmp_path):
    levels = np.arange(0, 65536, 997, dtype=np.uint16).reshape(6, 11)
    path = imagewrite.write_alpha(tmp_path / "a.png", levels)
    np.testing.assert_array_equal(imageio.read_image(path).rgb[..., 0], levels)
    np.testing.assert_array_equal(imageio.read_alpha(path), imageio.to_float32(levels))


def test_write_refuses_to_replace_without_overwrite(tmp_path):
    path = imagewrite.write_alpha(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="already exists"):
        imagewrite.write_alpha(path, np.ones((4, 4)))
    assert imageio.read_alpha(path).max() == 0
    imagewrite.write_alpha(path, np.ones((4, 4)), overwrite=True)
    assert imageio.read_alpha(path).min() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary files left


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = imagewrite.write_rgb(tmp_path / "a.png", _pattern())
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(InputError, match=r"a\.png: could not be written \(disk full\); it was left as it was"):
        imagewrite.write_rgb(path, np.zeros((24, 32, 3), dtype=np.uint8), overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_written_file_mode_is_not_private(tmp_path):
    path = imagewrite.write_rgb(tmp_path / "a.png", _pattern())
    assert os.stat(path).st_mode & 0o044  # readable by group/others under a usual umask


@pytest.mark.parametrize("suffix, exact", [(".png", True), (".tif", True), (".webp", False), (".jpg", False)])
def test_write_rgb_formats(tmp_path, suffix, exact):
    pixels = _pattern()
    path = imagewrite.write_rgb(tmp_path / f"a{suffix}", pixels)
    back = imageio.read_image(path).rgb
    if exact:
        np.testing.assert_array_equal(back, pixels)
    else:
        assert np.abs(back.astype(int) - pixels).mean() < 6


def test_write_16bit_rgb_and_rgba(tmp_path):
    rgb = _rng(9).integers(0, 65536, (8, 5, 3), dtype=np.uint16)
    alpha = _rng(10).random((8, 5))
    back = imageio.read_image(imagewrite.write_rgb(tmp_path / "a.png", rgb))
    np.testing.assert_array_equal(back.rgb, rgb)
    back = imageio.read_image(imagewrite.write_rgba(tmp_path / "b.png", rgb, alpha))
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.alpha, np.rint(alpha * 65535).astype(np.uint16))
    with pytest.raises(InputError, match="PNG only"):
        imagewrite.write_rgb(tmp_path / "a.tif", rgb)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_write_rgba_keeps_alpha_exact(tmp_path, suffix):
    rgb = _pattern()
    alpha = _rng(11).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    back = imageio.read_image(imagewrite.write_rgba(tmp_path / f"a{suffix}", rgb, alpha))
    np.testing.assert_array_equal(back.alpha, alpha)


def test_write_argument_errors(tmp_path):
    with pytest.raises(InputError, match="JPEG has no alpha"):
        imagewrite.write_rgba(tmp_path / "a.jpg", _pattern(), np.zeros((24, 32)))
    with pytest.raises(InputError, match="lossless"):
        imagewrite.write_alpha(tmp_path / "a.jpg", np.zeros((4, 4)))
    with pytest.raises(InputError, match="NaN"):
        imagewrite.write_alpha(tmp_path / "a.png", np.full((4, 4), np.nan))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        imagewrite.write_alpha(tmp_path / "a.png", np.full((4, 4), 1.5))
    with pytest.raises(InputError, match="losing precision"):
        imagewrite.write_alpha(tmp_path / "a.png", np.zeros((4, 4), np.uint16), bit_depth=8)
    with pytest.raises(InputError, match="H x W x 3"):
        imagewrite.write_rgb(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="must match"):
        imagewrite.write_rgba(tmp_path / "a.png", _pattern(), np.zeros((4, 4)))
    with pytest.raises(InputError, match="does not exist"):
        imagewrite.write_alpha(tmp_path / "no" / "a.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="is a folder"):
        imagewrite.write_alpha(tmp_path, np.zeros((4, 4)))
    with pytest.raises(InputError, match="zero-size"):
        imagewrite.write_alpha(tmp_path / "z.png", np.zeros((0, 4)))
    assert list(tmp_path.iterdir()) == []


def test_list_images_filters_by_suffix(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt", "c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in imageio.list_images(tmp_path)] == ["a.JPG", "b.png", "c.tiff"]
    with pytest.raises(InputError, match="does not exist"):
        imageio.list_images(tmp_path / "missing")


# ------------------------------------------------------------- inconsistent and implausible files


def test_png_whose_stream_ends_before_the_last_row_is_refused(tmp_path):
    # A well-formed zlib stream holding 10 of the 64 rows the header promises: Pillow's PNG decoder
    # stops at the stream's end and leaves the missing rows black.
    rows = b"".join(b"\x00" + bytes([200]) * 64 for _ in range(10))
    path = tmp_path / "short.png"
    path.write_bytes(_png_by_hand(64, 64, 8, 0, rows))
    with pytest.raises(InputError, match=r"short\.png.*10 of 64 rows"):
        imageio.read_image(path)


def _interlaced_png(width: int, height: int, pixels: np.ndarray, keep: int | None = None) -> bytes:
    """An Adam7-interlaced RGB PNG by hand (Pillow writes none); `keep` cuts the raw data."""
    rows = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\x00" + row.tobytes() for row in sub]
    raw = b"".join(rows)[:keep]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def test_interlaced_png_with_missing_data_is_refused(tmp_path):
    pixels = _rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    whole = tmp_path / "whole.png"
    whole.write_bytes(_interlaced_png(30, 40, pixels))
    np.testing.assert_array_equal(imageio.read_image(whole).rgb, pixels)
    path = tmp_path / "interlaced.png"
    path.write_bytes(_interlaced_png(30, 40, pixels, keep=-100))
    with pytest.raises(InputError, match=r"interlaced\.png.*pixel data"):
        imageio.read_image(path)


def test_tiny_png_claiming_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    # 14000 x 14000 (196 MP, under the 200 MP guard) from a 2 KB file: refused without decoding.
    rows = b"".join(b"\x00" + bytes(14000) for _ in range(100))
    path = tmp_path / "amplifier.png"
    path.write_bytes(_png_by_hand(14000, 14000, 8, 0, rows))
    assert path.stat().st_size < 4000

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match=r"amplifier\.png.*100 of 14000 rows"):
        imageio.read_image(path)


def test_large_flat_png_is_legitimate(tmp_path):
    # Compresses about 1026:1, close to deflate's 1032:1 ceiling: still a genuine image.
    path = tmp_path / "flat.png"
    Image.new("L", (3000, 3000), 0).save(path, optimize=True)
    assert 3000 * 3000 / path.stat().st_size > 1000
    loaded = imageio.read_image(path)
    assert loaded.size == (3000, 3000) and not loaded.rgb.any()


def test_tiny_jpeg_claiming_a_huge_image_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 14000, 14000)  # height, width
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"huge\.jpg.*cannot hold a 14000x14000 JPEG"):
        imageio.read_image(path)


@pytest.mark.parametrize("options", [{"quality": 1}, {"quality": 1, "progressive": True, "optimize": True}])
def test_large_flat_jpeg_is_legitimate(tmp_path, options):
    path = tmp_path / "flat.jpg"
    Image.new("L", (2400, 2400), 0).save(path, **options)
    assert imageio.read_image(path).size == (2400, 2400)
