"""`mattrt demo`: the main job runs end to end (synth -> tiled matting -> metrics -> contact sheet)."""

from __future__ import annotations

import json
import math


from mattrt.cli import main
from mattrt.imageio import read_image


def test_demo_runs_end_to_end_and_refuses_to_replace_a_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--count", "3", "--size", "224x160"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "aim_synthetic" and summary["checkpoint_sha256"]
    assert [row["kind"] for row in summary["images"]] == ["salient_opaque", "salient_transparent", "non_salient"]
    for row in summary["images"]:
        assert all(math.isfinite(row[k]) for k in ("sad", "mse", "grad", "conn"))
        assert 0 <= row["mse"] <= 1
    sheet = read_image(out / "contact_sheet.png").rgb
    assert sheet.shape[0] > 3 * 100 and sheet.std() > 10  # three rows of five panels, not blank
    alphas = sorted((out / "alpha").glob("*_alpha.png"))
    assert len(alphas) == 3
    assert main(["demo", "--out", str(out), "--count", "1"]) == 1
    assert "already holds a demo run" in capsys.readouterr().err
