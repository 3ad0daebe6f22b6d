"""`mattrt demo`: the main job end to end (weights -> photographs and a synthetic scene -> cached
graphs FP32/INT8 -> Triton repository and server -> mattes -> in-process comparison -> report), at
a small size with the registered aim_synthetic (ISNet, the default, is fetched from npm: its own
tests are in test_fetch.py); a second run into the same folder is refused without --overwrite; a
step that fails while the server runs names itself and leaves no server behind."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.imageio import read_image
from mattrt.jobs import demo

METRICS = ("sad", "mse", "grad", "conn")
VARIANTS = ("triton", "fp32", "int8")
SMALL = ["--model", "aim_synthetic", "--photos", "astronaut", "--count", "1", "--size", "320x192"]


@pytest.mark.skipif(not available("tritonserver"), reason=skip_reason("tritonserver"))
@pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))
def test_demo_runs_end_to_end_refuses_to_replace_a_run_and_names_a_failing_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "[3/8] graphs (artifact cache)" in printed and "Triton server stopped" in printed

    report = json.loads((out / "report.json").read_text())
    for key in ("model", "weights", "pipeline", "data", "graphs", "server", "images", "mean_latency_s", "worst",
                "triton_within_one_level", "mean_metrics", "step_seconds"):
        assert key in report
    assert report["model"] == "aim_synthetic" and "not for photographs" in report["weights"]["description"]
    assert set(report["graphs"]) == {"fp32", "int8"} and report["triton_within_one_level"]
    photo, scene = report["images"]
    assert (photo["id"], photo["kind"], photo["size"]) == ("astronaut", "photograph", [512, 512])
    assert scene["kind"].startswith("synthetic ") and scene["size"] == [320, 192]
    assert "metrics" not in photo  # a photograph has no ground truth
    for variant in VARIANTS:
        assert all(math.isfinite(scene["metrics"][variant][k]) for k in METRICS)
        assert 0 <= scene["metrics"][variant]["mse"] <= 1
    for row in report["images"]:
        assert {"semantic", "detail", "end_to_end"} <= set(row["latency_s"]["fp32"])
        assert row["latency_s"]["triton"]["end_to_end"] > 0
        assert row["triton_vs_in_process"]["max_abs"] <= 1 / 255 + 1e-6
        assert 0 < row["int8_vs_fp32"]["mean_abs"] < 0.05  # INT8 differs, but a little
        assert 0 <= row["int8_vs_fp32"]["mask_iou"] <= 1

    page = (out / "report.html").read_text()
    assert "<script" not in page and not re.search(r"(href|src)=['\"](https?:|//)", page)  # no external files
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<svg" in page and "not for photographs" in page and "astronaut" in page

    for row in report["images"]:
        for suffix in ("alpha", "cutout", "composite"):
            assert (out / "mattes" / f"{row['id']}_{suffix}.png").is_file()
        assert read_image(out / "mattes" / f"{row['id']}_cutout.png").alpha is not None

    assert main(["demo", "--out", str(out), *SMALL]) == 1
    assert "already holds a demo run" in capsys.readouterr().err

    # A real failure while the server runs: the mattes folder is a file. The step is named and
    # no tritonserver over this repository is left running.
    shutil.rmtree(out / "mattes")
    (out / "mattes").write_text("in the way")
    assert main(["demo", "--out", str(out), *SMALL[:4], "--count", "0", "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "step 6/8 (matting through Triton) failed" in captured.err and "Triton server stopped" in captured.out
    assert not _processes_serving(out / "triton-repo")


def _processes_serving(repo: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tritonserver" in text and str(repo.resolve()) in text:
            found.append(text)
    return found


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file")]) == 1
    assert "is a file" in capsys.readouterr().err
    new = str(tmp_path / "new")
    assert main(["demo", "--out", new, "--count", "-1"]) == 1
    assert "--count must be zero or more" in capsys.readouterr().err
    assert main(["demo", "--out", new, "--count", "0", "--photos", ""]) == 1
    assert "nothing to matte" in capsys.readouterr().err
    assert main(["demo", "--out", new, "--photos", "astronaut,lena"]) == 1
    err = capsys.readouterr().err
    assert "unknown photograph(s) lena" in err and "chelsea" in err
    assert not (tmp_path / "new").exists()
    assert demo.STEPS[4] == "starting the Triton server"
