"""Reliability of mattrt's file handling: damaged image files (property-based), and the table of
what each kind of bad input gets (README), kept true by tests here and in test_infer_cli.py.

The image-reader property: whatever bytes arrive (a truncated file, an edited header, random
bytes behind a format's signature), `decode_image` either returns exactly what the header
promises (its width and height, orientation applied; uint8 for 8-bit and uint16 for 16-bit
files) or raises InputError naming the file. A truncated file never decodes to anything but the
pixels of the whole file.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mattrt import imageio
from mattrt.errors import InputError


def _encoded(fmt: str, array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).quantize(16).save(buffer, format="PNG", transparency=3)
    return buffer.getvalue()


def _samples() -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (19, 23, 1), dtype=np.uint8)], axis=-1)
    grey16 = rng.integers(0, 65536, (19, 23), dtype=np.uint16)
    return {
        "png-rgb8": _encoded("PNG", rgb),
        "png-rgba8": _encoded("PNG", rgba),
        "png-palette": _palette_png(rgb),
        "png-grey16": _encoded("PNG", grey16),
        "png-rgb16": imageio.encode_png16(rgb.astype(np.uint16) * 257 + 3),
        "png-rgba16": imageio.encode_png16(rgba.astype(np.uint16) * 257),
        "jpeg": _encoded("JPEG", rgb, quality=90),
        "jpeg-progressive": _encoded("JPEG", rgb, quality=90, progressive=True),
        "webp-lossy": _encoded("WEBP", rgb, quality=80),
        "webp-lossless": _encoded("WEBP", rgba, lossless=True),
        "tiff-raw": _encoded("TIFF", rgb),
        "tiff-lzw": _encoded("TIFF", rgba, compression="tiff_lzw"),
        "tiff-deflate-grey16": _encoded("TIFF", grey16, compression="tiff_adobe_deflate"),
    }


SAMPLES = _samples()
SIGNATURES = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "webp": b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    "tiff": b"II*\x00\x08\x00\x00\x00",
}


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header states it, parsed by Pillow without decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data)).size
    except Exception:
        return None


def _check(data: bytes, name: str, whole: np.ndarray | None = None) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = imageio.decode_image(data, name=name)
    except InputError as exc:
        assert name in str(exc), f"the error does not name the file: {exc}"
        return
    width, height = _header_size(data)
    if loaded.orientation >= 5:
        width, height = height, width
    assert loaded.rgb.shape == (height, width, 3)
    assert loaded.rgb.dtype == {8: np.uint8, 16: np.uint16}[loaded.bit_depth]
    assert loaded.alpha is None or (loaded.alpha.shape == (height, width) and loaded.alpha.dtype == loaded.rgb.dtype)
    if whole is not None:
        np.testing.assert_array_equal(loaded.rgb, whole, err_msg=f"{name}: a damaged file decoded to other pixels")


WHOLE = {kind: imageio.decode_image(data, name=kind).rgb for kind, data in SAMPLES.items()}
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(kind=st.sampled_from(sorted(SAMPLES)), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_fail_named_or_decode_whole(kind, fraction):
    data = SAMPLES[kind]
    cut = int(len(data) * fraction)
    _check(data[:cut], f"cut-{kind}.bin", whole=WHOLE[kind])


@PROPERTY
@given(kind=st.sampled_from(sorted(SAMPLES)), edits=st.lists(st.tuples(st.integers(0, 95), st.integers(0, 255)),
                                                              min_size=1, max_size=3))
def test_edited_headers_fail_named_or_decode_as_promised(kind, edits):
    data = bytearray(SAMPLES[kind])
    for position, value in edits:
        data[position % len(data)] = value
    _check(bytes(data), f"edited-{kind}.bin")


@PROPERTY
@given(signature=st.sampled_from(sorted(SIGNATURES)), tail=st.binary(max_size=300))
def test_random_bytes_fail_named(signature, tail):
    _check(SIGNATURES[signature] + tail, f"random-{signature}.bin")


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_sample_decodes_whole(kind):
    _check(SAMPLES[kind], kind, whole=WHOLE[kind])


def _restreamed_png(data: bytes, keep: float) -> bytes:
    """The PNG with its pixel data cut to a fraction and re-compressed as a well-formed stream."""
    start = data.index(b"IDAT") - 4
    end = data.index(b"IEND") - 4
    raw = zlib.decompress(b"".join(_idat_payloads(data[start:end])))
    payload = zlib.compress(raw[: int(len(raw) * keep)])
    return data[:start] + _png_chunk(b"IDAT", payload) + data[end:]


def _idat_payloads(chunks: bytes) -> list[bytes]:
    payloads, position = [], 0
    while position < len(chunks):
        length, kind = struct.unpack(">I4s", chunks[position:position + 8])
        if kind == b"IDAT":
            payloads.append(chunks[position + 8:position + 8 + length])
        position += 12 + length
    return payloads


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


@PROPERTY
@given(kind=st.sampled_from(sorted(k for k in SAMPLES if k.startswith("png"))),
       keep=st.floats(0.0, 1.0, exclude_max=True))
def test_png_with_short_well_formed_stream_fails_named(kind, keep):
    _check(_restreamed_png(SAMPLES[kind], keep), f"short-{kind}.png", whole=WHOLE[kind])


# ------------------------------------------------------------------------------------ full disks


def test_write_on_a_full_disk_names_the_file_and_leaves_nothing(full_disk):
    target = full_disk / "matte.png"
    with pytest.raises(InputError, match=r"matte\.png: could not be written \(No space left on device\)"):
        imageio.write_alpha(target, np.random.default_rng(0).random((64, 64)))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_eval_json_on_a_full_disk_is_a_clear_error(tmp_path, full_disk, capsys):
    from mattrt.cli import main

    for side in ("gt", "pred"):
        (tmp_path / side).mkdir()
        imageio.write_alpha(tmp_path / side / "a.png", np.zeros((8, 8)))
    code = main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--json", str(full_disk / "report.json")])
    assert code == 1
    assert "report.json: could not be written (No space left on device)" in capsys.readouterr().err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


# ------------------------------------------------------------------------------- memory bounds


def test_require_memory_states_the_estimate_and_the_limit():
    from mattrt.resources import available_memory, require_memory

    available = available_memory()
    assert available is not None and available > 0
    require_memory(available // 2, "half", "unused")
    with pytest.raises(InputError, match=r"thing needs about .* GiB of memory \(estimate\), more than the .* "
                                         r"GiB available; do less"):
        require_memory(available * 2, "thing", "do less")


def test_synth_refuses_a_size_beyond_memory_and_creates_nothing(tmp_path, capsys):
    from mattrt.cli import main

    out = tmp_path / "set"
    assert main(["synth", "--out", str(out), "--count", "1", "--size", "100000x100000", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "a 100000x100000 sample needs about 1788.1 GiB of memory (estimate)" in err and "--size" in err
    assert not out.exists()


def test_synth_failing_midway_leaves_nothing_it_wrote(tmp_path, monkeypatch):
    from mattrt.calibration import synthetic

    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    drawn = []
    real = synthetic.generate_sample

    def fail_on_the_third(*args, **kwargs):
        drawn.append(1)
        if len(drawn) == 3:
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_sample", fail_on_the_third)
    with pytest.raises(MemoryError):
        synthetic.write_dataset(keep / "set", 4, (16, 16), 0, progress=False)
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
    with pytest.raises(MemoryError):
        drawn.clear()
        synthetic.write_dataset(keep, 4, (16, 16), 0, progress=False)
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
