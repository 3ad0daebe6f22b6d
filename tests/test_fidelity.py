"""`mattrt fidelity` (calibration/fidelity.py), its image panels (mattrt/figures.py) and the charts (mattrt/charts.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mattrt.cli import main
from mattrt.errors import InputError


@pytest.fixture(scope="module")
def export_dir():
    from test_calibration import tiny_export_with_precisions

    return tiny_export_with_precisions()


def test_fidelity_cli_writes_json_and_figure(export_dir, tmp_path, capsys):
    report_path, figure_path = tmp_path / "fidelity.json", tmp_path / "fidelity.png"
    code = main(["fidelity", str(export_dir), "--data", "synthetic:3", "--json", str(report_path),
                 "--figure", str(figure_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fp16" in printed and "int8" in printed
    report = json.loads(report_path.read_text())
    assert report["images"] == 3 and report["ground_truth"] is True
    assert list(report["precisions"]) == ["fp32", "fp16", "int8", "int8_cpu"]
    # int8 is the TensorRT-form graph, int8_cpu onnxruntime's CPU graph (what `infer --precision int8` runs)
    assert report["precisions"]["int8"]["graphs"] == {"semantic": "semantic.int8.onnx", "detail": "detail.int8.onnx"}
    assert report["precisions"]["int8_cpu"]["graphs"] == {"semantic": "semantic.int8_cpu.onnx",
                                                         "detail": "detail.int8_cpu.onnx"}
    assert report["variants"]["detail"]["int8_cpu"]["ranges"] == "detail.int8.ranges.json"
    fp32 = report["precisions"]["fp32"]
    for key in ("sad", "mse", "grad", "conn", "sad_trimap"):
        assert fp32["vs_gt_mean"][key] >= 0
    for precision in ("fp16", "int8", "int8_cpu"):
        entry = report["precisions"][precision]
        close = entry["vs_fp32"]
        # the variants really differ from FP32 (argmax fusion may flip a pixel fully) and the figures agree
        assert 0 < close["max_abs"] <= 1
        expected = 100 * (entry["vs_gt_mean"]["sad"] - fp32["vs_gt_mean"]["sad"]) / fp32["vs_gt_mean"]["sad"]
        assert close["delta_sad_percent"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert abs(close["delta_sad_percent"]) <= close["sad_to_fp32_percent"] + 1e-9
        assert entry["target"]["abs_delta_sad_percent_at_most"] in (0.5, 3.0)
    fp16, int8, cpu = (report["precisions"][p]["vs_fp32"] for p in ("fp16", "int8", "int8_cpu"))
    assert fp16["sad_to_fp32_percent"] < int8["sad_to_fp32_percent"] and fp16["psnr_mean"] > int8["psnr_mean"]
    assert fp16["sad_to_fp32_percent"] < cpu["sad_to_fp32_percent"]
    assert report["precisions"]["int8_cpu"]["images"] != report["precisions"]["int8"]["images"]  # two graphs
    image = Image.open(figure_path)
    assert image.format == "PNG" and image.width > 5 * 150 and image.height > 3 * 150
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # panels were drawn, not a blank canvas
    # refuses to overwrite without --overwrite
    assert main(["fidelity", str(export_dir), "--data", "synthetic:1", "--json", str(report_path)]) == 1


def test_fidelity_on_a_folder_without_ground_truth(export_dir, tmp_path):
    from mattrt.calibration.fidelity import fidelity_report
    from mattrt.data.synthetic import generate_sample, sample_rng
    from mattrt.imagewrite import write_rgb

    write_rgb(tmp_path / "a.png", generate_sample("non_salient", (70, 50), sample_rng(5, 0)).image)
    report, images, alphas = fidelity_report(export_dir, tmp_path, precisions=["int8"])
    assert report["ground_truth"] is False and list(report["precisions"]) == ["fp32", "int8"]
    assert "vs_gt_mean" not in report["precisions"]["int8"]
    assert alphas["int8"][0].shape == (50, 70)


def test_fidelity_needs_the_requested_precisions(export_dir, tmp_path):
    from mattrt.calibration.fidelity import fidelity_report

    fp32_only = export_dir.parent / "fp32_only"
    with pytest.raises(InputError, match="no fp16"):
        fidelity_report(fp32_only, "synthetic:1", precisions=["fp16"])
    with pytest.raises(InputError, match="no int8_cpu"):
        fidelity_report(fp32_only, "synthetic:1", precisions=["int8_cpu"])
    with pytest.raises(InputError, match="unknown precision int4"):
        fidelity_report(export_dir, "synthetic:1", precisions=["int4"])


def test_heat_map_and_grid():
    from mattrt.figures import heat_map, image_grid

    values = np.linspace(0, 2, 12).reshape(3, 4)
    colours = heat_map(values, vmax=1.0)
    assert colours.shape == (3, 4, 3) and colours.dtype == np.uint8
    assert (colours[0, 0] == [0, 0, 4]).all() and (colours[-1, -1] == colours[-1, -2]).all()  # clipped at vmax
    assert colours[1, 0].sum() > colours[0, 1].sum()  # brighter with the value
    with pytest.raises(InputError):
        image_grid([], "unused.png")


def test_line_chart_draws_series(tmp_path):
    from mattrt.charts import line_chart, save_png

    steps = np.arange(50)
    path = save_png(line_chart({"a": (steps, np.exp(-steps / 10) + 0.01), "b": (steps, np.full(50, 0.5))},
                               title="t", x_label="step", y_label="loss", log_y=True), tmp_path / "c.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = (abs(pixels - [31, 119, 180]).sum(axis=2) < 30).sum()
    orange = (abs(pixels - [255, 127, 14]).sum(axis=2) < 30).sum()
    assert blue > 100 and orange > 100
