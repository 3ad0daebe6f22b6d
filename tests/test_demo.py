"""`mattrt demo`: the main job end to end (synthetic data -> cached export FP32/INT8 -> Triton
repository and server -> mattes -> in-process comparison -> report), at a small size; a second
run into the same folder is refused without --overwrite; a step that fails while the server runs
names itself and leaves no server behind."""

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


@pytest.mark.skipif(not available("tritonserver"), reason=skip_reason("tritonserver"))
@pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))
def test_demo_runs_end_to_end_refuses_to_replace_a_run_and_names_a_failing_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--count", "2", "--size", "320x192"]) == 0
    printed = capsys.readouterr().out
    assert "[2/7] export" in printed and "Triton server stopped" in printed

    report = json.loads((out / "report.json").read_text())
    for key in ("model", "weights", "data", "exports", "server", "images", "mean_metrics", "mean_latency_s", "worst",
                "step_seconds"):
        assert key in report
    assert report["model"] == "aim_synthetic" and "not for photographs" in report["weights"]["description"]
    assert set(report["exports"]) == {"fp32", "int8"}
    assert [row["kind"] for row in report["images"]] == ["salient_opaque", "salient_transparent"]
    for row in report["images"]:
        for variant in VARIANTS:
            assert all(math.isfinite(row["metrics"][variant][k]) for k in METRICS)
            assert 0 <= row["metrics"][variant]["mse"] <= 1
        assert {"semantic", "detail", "end_to_end"} <= set(row["latency_s"]["fp32"])
        assert row["latency_s"]["triton"]["end_to_end"] > 0
        assert row["triton_vs_in_process"]["max_abs"] <= 1 / 255 + 1e-6
        assert 0 < row["int8_vs_fp32"]["mean_abs"] < 0.05  # INT8 differs, but a little

    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<svg" in page and "not for photographs" in page

    for row in report["images"]:
        for suffix, channels in (("alpha", 1), ("cutout", 4), ("composite", 3)):
            path = out / "mattes" / f"{row['id']}_{suffix}.png"
            assert path.is_file()
        assert read_image(out / "mattes" / f"{row['id']}_composite.png").rgb.std() > 10

    assert main(["demo", "--out", str(out), "--count", "1"]) == 1
    assert "already holds a demo run" in capsys.readouterr().err

    # A real failure while the server runs: the mattes folder is a file. The step is named and
    # no tritonserver over this repository is left running.
    shutil.rmtree(out / "mattes")
    (out / "mattes").write_text("in the way")
    assert main(["demo", "--out", str(out), "--count", "1", "--size", "160x128", "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "step 5/7 (matting through Triton) failed" in captured.err and "Triton server stopped" in captured.out
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
    assert main(["demo", "--out", str(tmp_path / "new"), "--count", "0"]) == 1
    assert "--count must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert demo.STEPS[3] == "starting the Triton server"
