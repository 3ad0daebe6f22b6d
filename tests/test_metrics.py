"""mattrt.metrics and `mattrt eval`: hand-computed cases, invariants, and independent
straightforward implementations of the gradient and connectivity errors."""

from __future__ import annotations

import json
import math
from collections import deque

import numpy as np
import pytest

from mattrt import metrics
from mattrt.cli import main
from mattrt.errors import InputError
from mattrt.imagewrite import write_alpha

# A 3 x 3 case computed by hand.
PRED = np.array([[0.0, 0.5, 1.0], [0.2, 0.4, 0.6], [1.0, 1.0, 0.0]])
GT = np.array([[0.0, 1.0, 1.0], [0.0, 0.4, 1.0], [1.0, 0.5, 0.0]])
# |PRED - GT| = [[0, .5, 0], [.2, 0, .4], [0, .5, 0]]: sum 1.6, squares sum .25+.04+.16+.25 = 0.70
TRIMAP = np.array([[0, 128, 255], [0, 128, 128], [255, 128, 0]], dtype=np.uint8)
# unknown pixels (0,1) (1,1) (1,2) (2,1): |diff| .5 + 0 + .4 + .5 = 1.4, squares .25+.16+.25 = 0.66


def test_sad_mse_mad_psnr_whole_image_by_hand():
    assert metrics.sad(PRED, GT) == pytest.approx(1.6 / 1000)
    assert metrics.mse(PRED, GT) == pytest.approx(0.70 / 9)
    assert metrics.mad(PRED, GT) == pytest.approx(1.6 / 9)
    assert metrics.psnr(PRED, GT) == pytest.approx(10 * math.log10(9 / 0.70))  # 11.09 dB


def test_sad_mse_mad_psnr_in_the_unknown_band_by_hand():
    assert metrics.sad(PRED, GT, TRIMAP) == pytest.approx(1.4 / 1000)
    assert metrics.mse(PRED, GT, TRIMAP) == pytest.approx(0.66 / 4)
    assert metrics.mad(PRED, GT, TRIMAP) == pytest.approx(1.4 / 4)
    assert metrics.psnr(PRED, GT, TRIMAP) == pytest.approx(10 * math.log10(4 / 0.66))


def test_trimap_conventions_agree():
    as_float = TRIMAP / 255.0  # 128/255 counts as unknown
    half = np.where(TRIMAP == 128, 0.5, TRIMAP / 255.0)
    as_bool = TRIMAP == 128
    for trimap in (as_float, half, as_bool, TRIMAP.astype(np.int64), TRIMAP[..., None]):
        assert metrics.sad(PRED, GT, trimap) == pytest.approx(1.4 / 1000)
    np.testing.assert_array_equal(metrics.unknown_region(half), as_bool)


def test_connectivity_penalises_a_detached_pixel_by_hand():
    # Both mattes: an opaque 2x2 block plus one faint pixel at (3, 3): pred 0.16, gt 0.14.
    gt = np.zeros((4, 4))
    gt[:2, :2] = 1.0
    pred = gt.copy()
    gt[3, 3], pred[3, 3] = 0.14, 0.16
    # At t = 0.1 the faint pixel is its own component, the block is the largest, so the pixel's
    # level is t0 = 0: d_pred = 0.16 >= 0.15 -> phi 0.84; d_gt = 0.14 < 0.15 -> phi 1. Error 0.16.
    assert metrics.connectivity_error(pred, gt) == pytest.approx(0.16 / 1000)
    assert metrics.sad(pred, gt) == pytest.approx(0.02 / 1000)
    # Join the pixel to the block with opaque pixels in both: at t = 0.1 it belongs to the largest
    # component, it drops out at t = 0.2, so its level is 0.1: d = 0.06 and 0.04, phi 1 for both.
    for matte in (pred, gt):
        matte[0, 2:] = 1.0
        matte[1:3, 3] = 1.0
    assert metrics.connectivity_error(pred, gt) == 0.0
    assert metrics.sad(pred, gt) == pytest.approx(0.02 / 1000)


def test_connectivity_breaks_ties_in_column_major_order_as_matlab():
    # Two 2-pixel components at t = 0.1 and 0.2: A = (0,2),(0,3) first in row-major order,
    # B = (1,0),(2,0) first in column-major order. X = (0,3) has pred 0.45, gt 0.25.
    gt = np.zeros((4, 4))
    gt[0, 2] = gt[1, 0] = gt[2, 0] = 0.5
    pred = gt.copy()
    pred[0, 3], gt[0, 3] = 0.45, 0.25
    # MATLAB keeps B, so X's level is 0: phi 1 - 0.45 = 0.55 vs 1 - 0.25 = 0.75 -> 0.2.
    # (Keeping A instead would give X level 0.2: phi 0.75 vs 1 -> 0.25.)
    assert metrics.connectivity_error(pred, gt) == pytest.approx(0.2 / 1000)


def test_connectivity_with_an_empty_level():
    # Nothing is >= 0.1 in both mattes, so the largest component at t = 0.1 is empty and every
    # pixel's level is 0: pred 0.9 -> phi 0.1, gt 0.05 -> phi 1. Error 0.9 (AIM's code skips the
    # level, leaves the level at 1 and reports 0).
    pred = np.zeros((3, 3))
    gt = np.zeros((3, 3))
    pred[1, 1], gt[1, 1] = 0.9, 0.05
    assert metrics.connectivity_error(pred, gt) == pytest.approx(0.9 / 1000)


def test_perfect_prediction_scores_zero_and_infinite_psnr():
    gt = np.random.default_rng(0).random((12, 10))
    trimap = np.where(gt > 0.7, 255, np.where(gt < 0.3, 0, 128)).astype(np.uint8)
    results = metrics.evaluate(gt, gt.copy(), trimap)
    for name in ("sad", "mse", "mad", "grad", "conn"):
        assert results[name] == 0.0 and results[name + "_trimap"] == 0.0
    assert results["psnr"] == math.inf and results["psnr_trimap"] == math.inf


def test_metrics_are_symmetric_and_evaluate_matches_the_functions():
    rng = np.random.default_rng(1)
    pred, gt = rng.random((16, 14)), rng.random((16, 14))
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(16, 14))
    functions = {"sad": metrics.sad, "mse": metrics.mse, "mad": metrics.mad, "grad": metrics.gradient_error,
                 "conn": metrics.connectivity_error, "psnr": metrics.psnr}
    results = metrics.evaluate(pred, gt, trimap)
    for name, function in functions.items():
        assert function(pred, gt) == pytest.approx(function(gt, pred))
        assert results[name] == pytest.approx(function(pred, gt))
        assert results[name + "_trimap"] == pytest.approx(function(pred, gt, trimap))


def test_empty_unknown_band():
    trimap = np.zeros(PRED.shape, dtype=np.uint8)
    assert metrics.sad(PRED, GT, trimap) == 0.0
    assert math.isnan(metrics.mse(PRED, GT, trimap)) and math.isnan(metrics.psnr(PRED, GT, trimap))
    assert metrics.mean_metrics([{"mse": math.nan, "sad": 1.0}, {"mse": 0.5, "sad": 3.0}]) == {"mse": 0.5, "sad": 2.0}


# ----------------------------------------------------------- independent straightforward versions


def _dim_kernel(sigma: float) -> np.ndarray:
    """DIM's gaussgradient kernel written out as in its definition: 2-D loops, L2 normalisation."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    size = 2 * half + 1
    kernel = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u, v = i - half, j - half
            gauss_u = math.exp(-u * u / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))
            gauss_v = math.exp(-v * v / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))
            kernel[i, j] = gauss_u * (-v * gauss_v / (sigma * sigma))
    return kernel / math.sqrt((kernel ** 2).sum())


def _convolve_replicate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full 2-D convolution (kernel flipped) with replicated borders, pixel by pixel."""
    half = kernel.shape[0] // 2
    height, width = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            total = 0.0
            for i in range(-half, half + 1):
                for j in range(-half, half + 1):
                    yy = min(max(y - i, 0), height - 1)
                    xx = min(max(x - j, 0), width - 1)
                    total += kernel[i + half, j + half] * image[yy, xx]
            out[y, x] = total
    return out


def _gradient_error_reference(pred, gt, region, sigma=1.4):
    hx = _dim_kernel(sigma)
    hy = hx.T
    magnitude = {}
    for name, image in (("pred", pred), ("gt", gt)):
        gx, gy = _convolve_replicate(image, hx), _convolve_replicate(image, hy)
        magnitude[name] = np.sqrt(gx ** 2 + gy ** 2)
    return float(((magnitude["pred"] - magnitude["gt"]) ** 2)[region].sum() / 1000)


def _components_column_major(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components by flood fill, numbered in column-major order of their first pixel."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for x in range(width):
        for y in range(height):
            if mask[y, x] and not seen[y, x]:
                queue, pixels = deque([(y, x)]), []
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    pixels.append((cy, cx))
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                components.append(pixels)
    return components


def _connectivity_reference(pred, gt, region, steps=10, theta=0.15):
    height, width = pred.shape
    level = [[None] * width for _ in range(height)]
    for k in range(1, steps + 1):
        threshold = k / steps
        components = _components_column_major((pred >= threshold) & (gt >= threshold))
        largest = set()
        best = 0
        for pixels in components:  # first of the largest, as MATLAB's max does
            if len(pixels) > best:
                best, largest = len(pixels), set(pixels)
        for y in range(height):
            for x in range(width):
                if level[y][x] is None and (y, x) not in largest:
                    level[y][x] = (k - 1) / steps
    total = 0.0
    for y in range(height):
        for x in range(width):
            if not region[y, x]:
                continue
            l_value = 1.0 if level[y][x] is None else level[y][x]
            d_pred, d_gt = pred[y, x] - l_value, gt[y, x] - l_value
            phi_pred = 1 - d_pred if d_pred >= theta else 1.0
            phi_gt = 1 - d_gt if d_gt >= theta else 1.0
            total += abs(phi_pred - phi_gt)
    return total / 1000


@pytest.mark.parametrize("seed", range(4))
def test_gradient_error_matches_the_written_out_definition(seed):
    rng = np.random.default_rng(seed)
    gt = np.clip(rng.random((11, 13)) * 1.6 - 0.3, 0, 1)
    pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=gt.shape)
    everywhere = np.ones(gt.shape, dtype=bool)
    assert metrics.gradient_error(pred, gt) == pytest.approx(_gradient_error_reference(pred, gt, everywhere), rel=1e-10)
    assert metrics.gradient_error(pred, gt, trimap) == pytest.approx(
        _gradient_error_reference(pred, gt, trimap == 128), rel=1e-10)


def test_gradient_kernel_facts():
    smoothing, derivative = metrics.gaussian_gradient_kernels(1.4)
    assert smoothing.size == derivative.size == 9  # half size 4 for sigma 1.4
    np.testing.assert_allclose(np.outer(smoothing, derivative), _dim_kernel(1.4), atol=1e-15)
    flat = np.full((9, 9), 0.3)
    assert metrics.gradient_error(flat, np.full((9, 9), 0.8)) == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("seed", range(6))
def test_connectivity_error_matches_the_flood_fill_definition(seed):
    rng = np.random.default_rng(seed)
    # Multiples of 0.05 hit the thresholds exactly and make equal-size components likely.
    gt = np.round(np.clip(rng.random((8, 9)) * 1.4 - 0.2, 0, 1) * 20) / 20
    pred = np.round(np.clip(gt + rng.normal(0, 0.25, gt.shape), 0, 1) * 20) / 20
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=gt.shape)
    everywhere = np.ones(gt.shape, dtype=bool)
    assert metrics.connectivity_error(pred, gt) == pytest.approx(_connectivity_reference(pred, gt, everywhere), abs=1e-12)
    assert metrics.connectivity_error(pred, gt, trimap) == pytest.approx(
        _connectivity_reference(pred, gt, trimap == 128), abs=1e-12)


# ------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("pred, gt, message", [
    (np.zeros((3, 3)), np.zeros((3, 4)), "must match"),
    (np.full((3, 3), np.nan), np.zeros((3, 3)), "NaN"),
    (np.full((3, 3), 1.5), np.zeros((3, 3)), r"\[0, 1\]"),
    (np.zeros((3, 3)), np.full((3, 3), -0.1), r"\[0, 1\]"),
    (np.zeros((3, 3), np.uint8), np.zeros((3, 3)), "divide 8-bit"),
    (np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), "H x W"),
])
def test_bad_mattes_are_input_errors(pred, gt, message):
    for function in (metrics.sad, metrics.mse, metrics.gradient_error, metrics.connectivity_error, metrics.evaluate):
        with pytest.raises(InputError, match=message):
            function(pred, gt)


def test_bad_trimaps_and_options_are_input_errors():
    with pytest.raises(InputError, match="trimap has shape"):
        metrics.sad(PRED, GT, np.zeros((2, 2), np.uint8))
    with pytest.raises(InputError, match="divide 8-bit trimaps by 255"):
        metrics.sad(PRED, GT, TRIMAP.astype(np.float64))
    with pytest.raises(InputError, match="0 \\(background\\), 128"):
        metrics.sad(PRED, GT, TRIMAP.astype(np.int32) * 2)
    with pytest.raises(InputError, match="step"):
        metrics.connectivity_error(PRED, GT, step=0.3)
    with pytest.raises(InputError, match="sigma"):
        metrics.gradient_error(PRED, GT, sigma=0)


# --------------------------------------------------------------------------------------- mattrt eval


def _write_set(folder, mattes):
    folder.mkdir()
    for name, matte in mattes.items():
        write_alpha(folder / f"{name}.png", matte, bit_depth=16)


def test_eval_cli_pairs_by_stem_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(2)
    gt = {f"img{i}": rng.random((20, 24)) for i in range(3)}
    pred = {name: np.clip(matte + 0.1 * (i == 1), 0, 1) for i, (name, matte) in enumerate(gt.items())}
    trimaps = {name: np.where(matte > 0.8, 1.0, np.where(matte < 0.2, 0.0, 0.5)) for name, matte in gt.items()}
    _write_set(tmp_path / "gt", gt)
    _write_set(tmp_path / "pred", pred)
    (tmp_path / "tri").mkdir()
    for name, trimap in trimaps.items():
        write_alpha(tmp_path / "tri" / f"{name}.png", trimap)
    report = tmp_path / "report.json"
    code = main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--trimap", str(tmp_path / "tri"), "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "img1" in out and "mean (3)" in out and "sad-T" in out
    data = json.loads(report.read_text())
    rows = {row["name"]: row for row in data["images"]}
    assert rows["img0"]["sad"] == 0.0 and rows["img0"]["psnr"] is None  # infinite PSNR written as null
    expected = metrics.evaluate(pred["img1"], gt["img1"], trimaps["img1"])
    quantised = np.rint(pred["img1"] * 65535) / 65535 - np.rint(gt["img1"] * 65535) / 65535
    assert rows["img1"]["sad"] == pytest.approx(np.abs(quantised).sum() / 1000, rel=1e-5)
    assert rows["img1"]["conn_trimap"] == pytest.approx(expected["conn_trimap"], abs=1e-3)
    assert data["mean"]["sad"] == pytest.approx(rows["img1"]["sad"] / 3)
    assert data["missing"] == {"pred": [], "gt": [], "trimap": []} and data["failed"] == []


def test_eval_cli_reports_missing_pairs_and_size_mismatch(tmp_path, capsys):
    _write_set(tmp_path / "gt", {"a": np.zeros((8, 8)), "b": np.ones((8, 8)), "c": np.ones((8, 8))})
    _write_set(tmp_path / "pred", {"a": np.zeros((8, 8)), "b": np.ones((8, 9)), "z": np.ones((8, 8))})
    report = tmp_path / "r.json"
    code = main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 1
    assert "missing pred for 1 image(s): c" in out
    assert "missing gt for 1 image(s): z" in out
    assert "error in b: size mismatch: pred is 9x8, gt is 8x8" in out
    data = json.loads(report.read_text())
    assert data["evaluated"] == 1 and data["failed"] == ["b"]
    # The report is not replaced without --overwrite.
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(report)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_eval_cli_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_eval_cli_scores_the_alpha_of_rgba_cutouts(tmp_path, capsys):
    from mattrt.imagewrite import write_rgba

    matte = np.random.default_rng(3).random((10, 12))
    _write_set(tmp_path / "gt", {"cut": matte})
    (tmp_path / "pred").mkdir()
    write_rgba(tmp_path / "pred" / "cut.png", np.zeros((10, 12, 3)), matte, bit_depth=16)
    args = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(tmp_path / "r.json")]
    assert main([*args, "--pred-channel", "alpha"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["sad"] == 0.0
    # By default a file with an alpha channel is scored by its alpha, and the run says so.
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 0
    assert "scored the alpha channel of 1 prediction file(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"][0]["sad"] == 0.0 and report["images"][0]["pred_channel"] == "alpha"
    assert main([*args, "--overwrite", "--pred-channel", "0"]) == 0  # the black colour: every alpha is an error
    assert json.loads((tmp_path / "r.json").read_text())["images"][0]["sad"] > 0.01


def test_eval_cli_refuses_colour_predictions_without_alpha(tmp_path, capsys):
    from mattrt.imagewrite import write_rgb

    matte = np.random.default_rng(5).random((10, 12))
    _write_set(tmp_path / "gt", {"shot": matte})
    (tmp_path / "pred").mkdir()
    write_rgb(tmp_path / "pred" / "shot.png", np.stack([matte, 1 - matte, matte], axis=-1))
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 1
    assert "colour image without an alpha channel is not a matte" in capsys.readouterr().out
    # Grey stored as RGB (equal channels) is a matte.
    write_rgb(tmp_path / "pred" / "shot.png", np.repeat(matte[..., None], 3, axis=-1), overwrite=True)
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0


@pytest.mark.parametrize("target", ["gt/a.png", "pred/a.png", "tri/a.png"])
def test_eval_cli_never_writes_its_json_over_an_input(tmp_path, capsys, target):
    _write_set(tmp_path / "gt", {"a": np.zeros((8, 8))})
    _write_set(tmp_path / "pred", {"a": np.zeros((8, 8))})
    _write_set(tmp_path / "tri", {"a": np.zeros((8, 8))})
    before = (tmp_path / target).read_bytes()
    code = main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--trimap",
                 str(tmp_path / "tri"), "--json", str(tmp_path / target), "--overwrite"])
    assert code == 1
    assert "is the input" in capsys.readouterr().err and (tmp_path / target).read_bytes() == before


def test_eval_cli_existing_json_is_refused_before_scoring(tmp_path, capsys):
    _write_set(tmp_path / "gt", {"a": np.zeros((8, 8))})
    _write_set(tmp_path / "pred", {"a": np.zeros((8, 8))})
    (tmp_path / "r.json").write_text("{}")
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json",
                 str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    assert "already exists; pass --overwrite" in captured.err and "mean" not in captured.out


def test_eval_cli_pairs_infer_outputs_with_their_ground_truth(tmp_path, capsys):
    # `mattrt infer` writes <stem>_alpha.png; the ground truth is <stem>.png
    matte = np.random.default_rng(4).random((6, 7))
    _write_set(tmp_path / "gt", {"photo": matte, "photo_alpha": 1 - matte})
    _write_set(tmp_path / "pred", {"photo_alpha": 1 - matte, "other_alpha": matte})
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 1
    out = capsys.readouterr().out
    # an exact stem wins over a stripped one; other_alpha has no ground truth
    assert "missing gt for 1 image(s): other_alpha" in out and "missing pred for 1 image(s): photo" in out
    _write_set(tmp_path / "gt2", {"other": matte})
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt2")]) == 1
    assert "missing gt for 1 image(s): photo_alpha" in capsys.readouterr().out
    (tmp_path / "pred" / "photo_alpha.png").unlink()
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt2")]) == 0
