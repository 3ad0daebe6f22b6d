"""Tiling plans and window-weighted stitching: coverage, alignment, weights summing to 1,
seamless reconstruction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mattrt.errors import InputError
from mattrt.runtime import ops
from mattrt.runtime.tiling import TilePlan, profile

# (height, width, tile, overlap, stride, margin)
CASES = [
    (1, 1, 64, 16, 16, 4),
    (1, 300, 64, 16, 16, 4),
    (63, 65, 64, 16, 16, 4),
    (150, 230, 64, 16, 16, 0),
    (520, 560, 512, 384, 16, 176),
    (1000, 777, 128, 48, 32, 11),
    (300, 301, 96, 40, 8, 19),
    (97, 400, 64, 0, 1, 0),
    (2160, 3840, 512, 64, 32, 16),
]


def _weight_sums(plan: TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """Raw sum of windows over the image and the sum of the normalised weights."""
    raw = np.zeros((plan.height, plan.width), np.float64)
    offsets = plan.offsets()
    windows = plan.windows(range(len(plan)))
    for (top, left), window in zip(offsets, windows):
        raw[top : top + plan.tile, left : left + plan.tile] += window[: plan.height - top, : plan.width - left]
    normalised = np.zeros_like(raw)
    for (top, left), window in zip(offsets, windows):
        part = window[: plan.height - top, : plan.width - left]
        region = raw[top : top + plan.tile, left : left + plan.tile]
        normalised[top : top + plan.tile, left : left + plan.tile] += np.divide(part, region, out=np.zeros_like(region), where=region > 0)
    return raw, normalised


@pytest.mark.parametrize("case", CASES)
def test_plan_is_aligned_inside_the_canvas_and_steps_at_most_tile_minus_overlap(case):
    height, width, tile, overlap, stride, margin = case
    plan = TilePlan.build(height, width, tile, overlap, stride, margin)
    for starts, length, canvas in ((plan.tops, height, plan.canvas_height), (plan.lefts, width, plan.canvas_width)):
        assert canvas >= max(length, tile) and canvas % stride == 0
        assert starts[0] == 0 and starts[-1] == canvas - tile
        assert all(s % stride == 0 for s in starts)
        steps = np.diff(starts)
        assert (steps > 0).all() and (steps <= tile - overlap).all()
    assert len(plan.offsets()) == len(plan) == len(plan.tops) * len(plan.lefts)
    assert (np.diff(plan.offsets()[:, 0]) >= 0).all()  # row-major: the band stitcher relies on it


@pytest.mark.parametrize("case", CASES)
def test_stitching_weights_sum_to_one_at_every_pixel(case):
    plan = TilePlan.build(*case)
    raw, normalised = _weight_sums(plan)
    assert raw.min() > 0, "a pixel has no tile with non-zero weight"
    np.testing.assert_allclose(normalised, 1.0, rtol=0, atol=1e-12)


def test_neighbours_at_exactly_tile_minus_overlap_form_a_partition_of_unity():
    tile, overlap, margin = 64, 24, 5
    # 64 + 3 steps of 40: the offsets are exactly tile - overlap apart.
    plan = TilePlan.build(184, 184, tile, overlap, 1, margin)
    assert np.all(np.diff(plan.tops) == tile - overlap)
    raw, _ = _weight_sums(plan)
    np.testing.assert_allclose(raw, 1.0, atol=1e-6)


def test_windows_are_zero_within_the_margin_of_inner_edges_only():
    tile, overlap, margin = 64, 32, 6
    inner = profile(tile, overlap, margin, True, True)
    assert (inner[:margin] == 0).all() and (inner[-margin:] == 0).all()
    assert (inner[overlap - margin :-(overlap - margin)] == 1).all()
    edge = profile(tile, overlap, margin, False, True)
    assert (edge[: tile - overlap + margin] == 1).all()
    assert np.array_equal(profile(tile, overlap, margin, False, False), np.ones(tile, np.float32))


def _stitch(plan: TilePlan, field: np.ndarray) -> np.ndarray:
    """Stitch tiles cut from `field` (reflected outside) back together."""
    acc = np.zeros((plan.height, plan.width), np.float32)
    weight = np.zeros_like(acc)
    offsets = plan.offsets()
    padded = np.pad(field, ((0, plan.canvas_height), (0, plan.canvas_width)), mode="reflect")
    tiles = np.stack([padded[t : t + plan.tile, l : l + plan.tile] for t, l in offsets])
    ops.stitch_accumulate(acc, weight, tiles, plan.windows(range(len(plan))), offsets)
    return ops.stitch_normalize(acc, weight)


@pytest.mark.parametrize("case", CASES[:7])
def test_stitching_consistent_tiles_reproduces_the_image_without_seams(case):
    plan = TilePlan.build(*case)
    constant = np.full((plan.height, plan.width), 0.3712, np.float32)
    np.testing.assert_allclose(_stitch(plan, constant), constant, atol=1e-6)
    y, x = np.mgrid[: plan.height, : plan.width].astype(np.float32)
    field = (np.sin(y / 17.0) * np.cos(x / 23.0)).astype(np.float32)
    np.testing.assert_allclose(_stitch(plan, field), field, atol=1e-5)


def test_whole_plan_is_the_tiled_plans_canvas_in_one_call():
    tiled = TilePlan.build(150, 230, 64, 16, 16, 4)
    whole = TilePlan.whole(150, 230, 64, 16)
    assert (whole.canvas_height, whole.canvas_width) == (tiled.canvas_height, tiled.canvas_width) == (160, 240)
    assert len(whole) == 1 and whole.is_whole
    small = TilePlan.whole(10, 20, 64, 16)
    assert (small.canvas_height, small.canvas_width) == (64, 64)


@pytest.mark.parametrize(
    "tile,overlap,stride,margin,message",
    [
        (60, 16, 16, None, "multiple of the model's stride multiple 16"),
        (64, 56, 16, None, "at most 48"),
        (64, 64, 1, None, "at most 63"),
        (64, 16, 16, 8, "less than half the overlap"),
        (64, 0, 16, 2, "needs an overlap"),
        (0, 0, 16, None, "positive integer"),
        (64, -1, 16, None, "non-negative"),
    ],
)
def test_invalid_tiling_options_are_refused(tile, overlap, stride, margin, message):
    with pytest.raises(InputError, match=message):
        TilePlan.build(100, 100, tile, overlap, stride, margin)


def test_zero_size_is_refused():
    with pytest.raises(InputError, match="zero size"):
        TilePlan.build(0, 10, 64, 16, 16)


def test_every_small_size_is_covered():
    for height, width in itertools.product([1, 2, 15, 16, 17, 63, 64, 65, 130], repeat=2):
        raw, _ = _weight_sums(TilePlan.build(height, width, 64, 16, 16, 4))
        assert raw.min() > 0, (height, width)
