"""`mattrt infer`: inputs of every kind, bad inputs, outputs, the overwrite and no-clobber rules,
and the JSON summary."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mattrt.cli import main
from mattrt.export.parity import generated_image
from mattrt.imagewrite import encode_png16

MODEL: list[str] = []
TIMING_KEYS = {"read", "semantic", "preprocess", "guidance", "detail", "stitch_fusion", "foreground", "write", "total"}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module", autouse=True)
def weights(tmp_path_factory):
    """One set of weights for every run (calibrated so that mattes are not constant)."""
    import torch

    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights

    path = tmp_path_factory.mktemp("weights") / "shm_tiny.pth"
    torch.save(calibrated_random_weights(create_model("shm_tiny"), seed=3).state_dict(), path)
    MODEL[:] = ["--model", "shm_tiny", "--checkpoint", str(path), "--backend", "torch", "--no-progress"]
    yield path
    MODEL.clear()


def _infer(*args) -> int:
    return main(["infer", *map(str, args), *MODEL])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _image(size=(48, 64), seed=0) -> np.ndarray:
    return generated_image(max(size), seed)[: size[0], : size[1]]


# -- formats and kinds of input ------------------------------------------------------------------
def test_a_folder_of_mixed_inputs_with_bad_files(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = _image()
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb).save(folder / "web.webp")
    Image.fromarray(rgb).save(folder / "scan.tif")
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "print.jpg")
    Image.fromarray(rgb[:1, :1]).save(folder / "one_pixel.png")
    Image.fromarray(rgb[:1, :50]).save(folder / "one_row.png")
    (folder / "corrupt.png").write_bytes(b"this is not an image at all")
    valid = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(valid[: len(valid) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"

    assert _infer(folder, "--out", out) == 1
    summary = _summary(out)
    done = {Path(r["input"]).name: r for r in summary["images"]}
    failed = {Path(f["input"]).name: f["error"] for f in summary["failures"]}
    assert set(done) == {"rgb.png", "photo.jpg", "web.webp", "scan.tif", "grey.png", "palette.png", "print.jpg",
                         "one_pixel.png", "one_row.png"}
    assert set(failed) == {"corrupt.png", "truncated.png", "empty.jpg"}
    assert "not a readable PNG, JPEG, WebP or TIFF" in failed["corrupt.png"]
    assert "truncated" in failed["truncated.png"] or "corrupt" in failed["truncated.png"]
    assert "empty" in failed["empty.jpg"]
    assert done["print.jpg"]["mode"] == "CMYK" and done["grey.png"]["mode"] == "L"
    for name, record in done.items():
        assert set(record["timings"]) == TIMING_KEYS, name
        with Image.open(record["output"]) as written:
            assert written.size == (record["width"], record["height"]) and written.mode == "L"
    assert summary["processed"] == 9 and summary["failed"] == 3
    err = capsys.readouterr().err
    assert "failed: " in err and "corrupt.png" in err
    assert summary["pipeline"]["trained"]


def test_untrained_models_are_flagged(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    assert main(["infer", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--model", "shm_tiny", "--no-progress"]) == 0
    assert "untrained weights" in capsys.readouterr().err


def test_sixteen_bit_input_gives_a_sixteen_bit_matte_unless_asked(tmp_path):
    rgb16 = _image().astype(np.uint16) * 257 + 3
    source = tmp_path / "deep.png"
    source.write_bytes(encode_png16(rgb16))
    out = tmp_path / "out"
    assert _infer(source, "--out", out) == 0
    assert _summary(out)["images"][0]["bit_depth"] == 16
    with Image.open(out / "deep_alpha.png") as written:
        assert written.mode.startswith("I;16")
    assert _infer(source, "--out", out, "--bit-depth", "8", "--overwrite") == 0
    with Image.open(out / "deep_alpha.png") as written:
        assert written.mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    stored = _image((40, 64))  # 64 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: 40 wide, 64 high
    Image.fromarray(stored).save(tmp_path / "camera.jpg", exif=exif)
    out = tmp_path / "out"
    assert _infer(tmp_path / "camera.jpg", "--out", out) == 0
    assert _summary(out)["images"][0]["orientation"] == 6
    with Image.open(out / "camera_alpha.png") as written:
        assert written.size == (40, 64)


def test_an_input_alpha_channel_is_handled_as_asked(tmp_path):
    rgba = np.dstack([_image(), np.zeros((48, 64), np.uint8)])
    rgba[:, 32:, 3] = 255  # left half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "cut.png", "--out", out, "--input-alpha", "error") == 1
    assert "has an alpha channel" in _summary(out)["failures"][0]["error"]
    assert _infer(tmp_path / "cut.png", "--out", out, "--input-alpha", "multiply", "--overwrite") == 0
    alpha = np.asarray(Image.open(out / "cut_alpha.png"))
    assert alpha[:, :32].max() == 0
    assert _summary(out)["images"][0]["input_alpha"] == "multiply"
    for mode in ("flatten", "ignore"):
        assert _infer(tmp_path / "cut.png", "--out", out, "--input-alpha", mode, "--overwrite") == 0


def test_declared_dimensions_past_the_bomb_guard_are_refused(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    Image.fromarray(_image((30, 40))).save(tmp_path / "small.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "bomb.png", tmp_path / "small.png", "--out", out) == 1
    failure = _summary(out)["failures"][0]
    assert failure["input"].endswith("bomb.png") and "900.0 megapixels exceeds the limit of 200.0" in failure["error"]
    # the limit is a flag: 30 x 40 = 1200 pixels is over a limit of 1000
    assert _infer(tmp_path / "small.png", "--out", out, "--max-pixels", "1000", "--overwrite") == 1
    assert "exceeds the limit" in _summary(out)["failures"][0]["error"]


def test_zero_size_headers_and_missing_paths_are_reported(tmp_path):
    (tmp_path / "zero.png").write_bytes(_png_header_only(0, 10))
    out = tmp_path / "out"
    assert _infer(tmp_path / "zero.png", tmp_path / "missing.png", tmp_path / "nothing-*.png", "--out", out) == 1
    errors = {Path(f["input"]).name: f["error"] for f in _summary(out)["failures"]}
    assert "zero size" in errors["zero.png"] or "corrupt" in errors["zero.png"]
    assert "no such file or folder" in errors["missing.png"]
    assert "matches no image files" in errors["nothing-*.png"]
    assert _summary(out)["processed"] == 0


def test_globs_expand_to_image_files(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(_image((20, 30))).save(tmp_path / name)
    (tmp_path / "c.txt").write_text("x")
    out = tmp_path / "out"
    assert _infer(tmp_path / "*", "--out", out) == 0
    assert sorted(Path(r["input"]).name for r in _summary(out)["images"]) == ["a.png", "b.png"]


# -- outputs ---------------------------------------------------------------------------------------
def test_rgba_cutout_and_composites(tmp_path):
    source = tmp_path / "photo.png"
    rgb = _image()
    Image.fromarray(rgb).save(source)
    Image.fromarray(_image((10, 12), seed=2)).save(tmp_path / "backdrop.jpg")
    out = tmp_path / "out"
    assert _infer(source, "--out", out) == 0
    alpha = np.asarray(Image.open(out / "photo_alpha.png"))
    assert _infer(source, "--out", out, "--output", "rgba", "--overwrite") == 0
    rgba = np.asarray(Image.open(out / "photo_rgba.png"))
    assert rgba.shape == (48, 64, 4)
    np.testing.assert_array_equal(rgba[..., 3], alpha)
    assert _infer(source, "--out", out, "--output", "composite", "--background", "#00ff00", "--overwrite") == 0
    composite = np.asarray(Image.open(out / "photo_composite.png")).astype(np.float32)
    a = alpha[..., None].astype(np.float32) / 255
    expected = rgba[..., :3].astype(np.float32) * a + np.array([0, 255, 0], np.float32) * (1 - a)
    assert np.abs(composite - expected).max() <= 1.0  # both sides rounded to 8 bit once
    assert _infer(source, "--out", out, "--output", "composite", "--background", tmp_path / "backdrop.jpg",
                  "--overwrite") == 0
    assert Image.open(out / "photo_composite.png").size == (64, 48)


def test_bad_backgrounds_and_options_are_refused(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--output", "composite", "--background", "chartreusey") == 1
    assert "neither a colour" in capsys.readouterr().err
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--background", "white") == 1
    assert "--output composite only" in capsys.readouterr().err
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--tile", "60") == 1
    assert "is not a multiple of model 'shm_tiny''s stride multiple 16; use 48 or 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infer", str(tmp_path / "p.png"), "--out", str(tmp_path / "o"), "--model", "shm_tiny",
              "--artifacts", str(tmp_path)])


def test_options_reach_the_pipeline(tmp_path):
    Image.fromarray(_image((100, 90))).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "p.png", "--out", out, "--tile", "32", "--overlap", "8", "--batch", "2",
                  "--semantic-scale", "0.5", "--detail-scale", "0.5") == 0
    summary = _summary(out)
    pipeline = summary["pipeline"]
    assert (pipeline["tile_size"], pipeline["overlap"], pipeline["batch"]) == (32, 8, 2)
    assert (pipeline["semantic_scale"], pipeline["detail_scale"]) == (0.5, 0.5)
    assert Image.open(out / "p_alpha.png").size == (90, 100)


# -- never clobber ---------------------------------------------------------------------------------
def test_outputs_are_replaced_only_with_overwrite(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "p.png", "--out", out) == 0
    first = (out / "p_alpha.png").read_bytes()
    assert _infer(tmp_path / "p.png", "--out", out) == 1
    assert "summary.json already exists" in capsys.readouterr().err
    assert _infer(tmp_path / "p.png", "--out", out, "--summary", tmp_path / "second.json") == 1
    assert "already exists; pass --overwrite" in json.loads((tmp_path / "second.json").read_text())["failures"][0]["error"]
    assert (out / "p_alpha.png").read_bytes() == first
    assert _infer(tmp_path / "p.png", "--out", out, "--overwrite") == 0


def test_an_out_that_would_write_onto_an_input_is_refused(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "x.png")
    Image.fromarray(_image((20, 30), seed=3)).save(tmp_path / "x_alpha.png")
    before = (tmp_path / "x_alpha.png").read_bytes()
    assert _infer(tmp_path, "--out", tmp_path, "--overwrite") == 1
    assert "inputs are never overwritten" in capsys.readouterr().err
    assert (tmp_path / "x_alpha.png").read_bytes() == before
    assert not (tmp_path / "summary.json").exists()


def test_two_inputs_claiming_one_output_are_refused(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(_image((20, 30))).save(tmp_path / folder / "same.png")
    assert _infer(tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out") == 1
    assert "would both be written" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    (tmp_path / "file").write_text("x")
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "file") == 1
    assert "is not a folder" in capsys.readouterr().err


# -- reliability (issue 10) ----------------------------------------------------------------------
def test_absurd_tile_and_detail_scale_are_refused_with_the_estimate(tmp_path, capsys):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    Image.fromarray(_image((20, 30), seed=1)).save(tmp_path / "q.png")
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--tile", "100000") == 1
    err = capsys.readouterr().err
    assert "tile 100000 x 100000 in batches of 4 needs about" in err and "GiB available; use a smaller --tile" in err
    assert not (tmp_path / "o").exists()
    # The detail scale depends on each image's size: those images fail, named; the run goes on.
    out = tmp_path / "o2"
    assert _infer(tmp_path / "p.png", tmp_path / "q.png", "--out", out, "--detail-scale", "5000") == 1
    summary = _summary(out)
    assert summary["processed"] == 0 and len(summary["failures"]) == 2
    assert "image 30x20 at detail scale 5000 (150000x100000 detail pixels) needs about" in summary["failures"][0]["error"]


def test_symlink_loops_are_per_input_failures(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_image((20, 30))).save(folder / "good.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (tmp_path / "direct.png").symlink_to(tmp_path / "direct.png")
    (tmp_path / "globbed").mkdir()
    (tmp_path / "globbed" / "ring.jpg").symlink_to(tmp_path / "globbed" / "ring.jpg")
    out = tmp_path / "out"
    assert _infer(tmp_path / "direct.png", folder, tmp_path / "globbed" / "*.jpg", "--out", out) == 1
    summary = _summary(out)
    assert [Path(r["input"]).name for r in summary["images"]] == ["good.png"]
    errors = {Path(f["input"]).name: f["error"] for f in summary["failures"]}
    assert set(errors) == {"direct.png", "loop.png", "ring.jpg"}
    assert all("symbolic link that leads to no file" in e for e in errors.values())


def test_unwritable_out_and_a_folder_summary_are_refused_before_any_work(tmp_path, capsys, read_only_folder):
    Image.fromarray(_image((20, 30))).save(tmp_path / "p.png")
    for out in ("/proc", read_only_folder):
        assert _infer(tmp_path / "p.png", "--out", out) == 1
        err = capsys.readouterr().err
        assert f"--out {out} is not writable" in err and "nothing was processed" in err
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--summary", tmp_path) == 1
    assert f"--summary {tmp_path} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert _infer(tmp_path / "p.png", "--out", tmp_path / "o", "--summary", read_only_folder / "s.json") == 1
    assert "--summary" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_full_disk_names_each_output_and_the_summary(tmp_path, capsys, full_disk):
    for name in ("a.png", "b.png"):
        Image.fromarray(_image((40, 50))).save(tmp_path / name)
    assert _infer(tmp_path / "a.png", tmp_path / "b.png", "--out", full_disk) == 1
    err = capsys.readouterr().err
    for name in ("a_alpha.png", "b_alpha.png"):
        assert f"{full_disk / name}: could not be written (No space left on device)" in err
    assert f"the summary was not written: {full_disk / 'summary.json'}: could not be written" in err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_pixel_limit_messages_give_a_figure_and_the_flag(tmp_path):
    Image.fromarray(_image((30, 40))).save(tmp_path / "small.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "small.png", "--out", out, "--max-pixels", "1000") == 1
    error = _summary(out)["failures"][0]["error"]
    assert "1,200 pixels exceeds the limit of 1,000 pixels" in error and "--max-pixels" in error
    assert "max_pixels" not in error.replace("max_pixels in Python", "")


def test_skip_existing_resumes_with_the_same_settings_only(tmp_path, capsys):
    for name in ("a.png", "b.png"):
        Image.fromarray(_image((20, 30))).save(tmp_path / name)
    out = tmp_path / "out"
    assert _infer(tmp_path / "a.png", "--out", out) == 0
    first = (out / "a_alpha.png").read_bytes()
    assert _infer(tmp_path / "a.png", tmp_path / "b.png", "--out", out) == 1
    assert "pass --skip-existing" in capsys.readouterr().err
    assert _infer(tmp_path / "a.png", tmp_path / "b.png", "--out", out, "--skip-existing") == 0
    summary = _summary(out)
    assert [Path(r["input"]).name for r in summary["skipped"]] == ["a.png"]
    assert [Path(r["input"]).name for r in summary["images"]] == ["b.png"]
    assert (out / "a_alpha.png").read_bytes() == first
    # Again: everything is done; both are listed as skipped.
    assert _infer(tmp_path / "a.png", tmp_path / "b.png", "--out", out, "--skip-existing") == 0
    assert len(_summary(out)["skipped"]) == 2 and _summary(out)["processed"] == 0
    # Other settings: refused, naming what changed.
    assert _infer(tmp_path / "a.png", "--out", out, "--skip-existing", "--detail-scale", "0.5") == 1
    assert "written with other settings (detail_scale 1.0 -> 0.5)" in capsys.readouterr().err
    assert _infer(tmp_path / "a.png", "--out", out, "--skip-existing", "--overwrite") == 1
    assert "choose one" in capsys.readouterr().err


def test_an_output_without_a_matching_record_is_not_skipped(tmp_path):
    Image.fromarray(_image((20, 30))).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_alpha.png").write_bytes(b"someone else's file")
    assert _infer(tmp_path / "a.png", "--out", out, "--skip-existing") == 1
    assert "does not record it from these settings" in _summary(out)["failures"][0]["error"]
    assert (out / "a_alpha.png").read_bytes() == b"someone else's file"


def test_a_run_that_finished_nothing_does_not_block_the_next(tmp_path):
    Image.fromarray(_image((20, 30))).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert _infer(tmp_path / "missing.png", "--out", out) == 1
    assert _summary(out)["processed"] == 0
    assert _infer(tmp_path / "a.png", "--out", out) == 0
    assert _summary(out)["processed"] == 1


def test_sigterm_cleans_up_and_records_what_finished(tmp_path):
    """By events, not timing: the fifth input is a FIFO, so the run cannot get past it until the
    test writes to it; SIGTERM arrives while the four images before it are done and it waits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(12):
        Image.fromarray(_image((48, 64), seed=index)).save(folder / f"img{index:02d}.png")
    held = folder / "img04.png"
    held.unlink()
    os.mkfifo(held)
    inputs = sorted(folder.iterdir())
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mattrt.cli", "infer", *map(str, inputs), "--out", str(out),
                                *MODEL], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    before = [out / f"img{index:02d}_alpha.png" for index in range(4)]
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in before):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the images before the FIFO were not written"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()
    assert "interrupted" in err.decode()
    summary = _summary(out)
    assert summary["interrupted"] and summary["processed"] == 4
    written = sorted(p.name for p in out.iterdir())
    assert not [name for name in written if name.startswith(".")], written  # no .part or probe files
    assert written == sorted([Path(r["output"]).name for r in summary["images"]] + ["summary.json"])
    held.unlink()
    Image.fromarray(_image((48, 64), seed=4)).save(held)
    # The interrupted run resumes.
    assert _infer(folder, "--out", out, "--skip-existing") == 0
    assert _summary(out)["processed"] + len(_summary(out)["skipped"]) == 12


@pytest.mark.parametrize("output", ["alpha", "rgba"])
def test_finishing_beside_the_matting_changes_nothing(tmp_path, weights, monkeypatch, output):
    """InferOptions.overlap_io (the default) finishes image i-1 on a helper thread while image i is
    read and matted: the same outputs, records, failures and their order as one image at a time,
    a read failure and a write failure in the middle included."""
    from mattrt.deploy.plan import model_pipeline
    from mattrt.jobs import infer as infer_job

    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate("abcde"):
        Image.fromarray(_image((40 + 8 * index, 56), seed=index)).save(folder / f"{name}.png")
    (folder / "c.png").write_bytes(b"not an image")
    real = infer_job.write_bytes

    def failing(path, *args, **kwargs):
        if Path(path).name.startswith("d_"):
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(infer_job, "write_bytes", failing)
    results = {}
    for overlap in (False, True):
        out = tmp_path / f"out-{overlap}"
        pipeline = model_pipeline("shm_tiny", checkpoint=weights)
        options = infer_job.InferOptions(output=output, progress=False, overlap_io=overlap)
        summary = infer_job.run_inference(pipeline, [str(folder)], out, options, log=lambda message: None)
        records = [{k: v for k, v in r.items() if k not in ("timings", "output")} for r in summary["images"]]
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "summary.json"}
        results[overlap] = (records, summary["failures"], files)
    sequential, overlapped = results[False], results[True]
    assert [r["input"] for r in sequential[0]] == [str(folder / f"{n}.png") for n in "abe"]
    assert [Path(f["input"]).name for f in sequential[1]] == ["c.png", "d.png"]
    assert "No space left on device" in sequential[1][1]["error"]
    assert overlapped[0] == sequential[0] and overlapped[1] == sequential[1]
    assert overlapped[2] == sequential[2] and sorted(overlapped[2]) == [f"{n}_{output}.png" for n in "abe"]
