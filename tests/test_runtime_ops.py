"""mattrt.runtime.ops, the host pipeline's per-pixel ops (for ops with a kernel, the kernel's
NumPy reference): coordinates, resampling, tile crops, stitching and fusion against PyTorch,
np.pad and plain loops, including the forms only the host path takes (rectangular tiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.errors import InputError
from mattrt.models.fusion import FUSIONS
from mattrt.runtime import ops


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_reflect_indices_match_numpy_reflect_padding(size):
    pad = 5 * size + 3  # far outside: several reflections
    expected = np.pad(np.arange(size), pad, mode="reflect")
    got = ops.reflect_indices(np.arange(-pad, size + pad), size)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("low_size,out_size", [((7, 5), (33, 20)), ((64, 48), (1000, 777)), ((1, 1), (5, 9)),
                                               ((10, 10), (10, 10)), ((30, 20), (7, 5)), ((96, 64), (1080, 1920))])
def test_upsample_region_equals_one_full_interpolate(low_size, out_size):
    low = _rng().random((3, *low_size), dtype=np.float32)
    full = F.interpolate(torch.from_numpy(low)[None], out_size, mode="bilinear", align_corners=False)[0].numpy()
    got = ops.upsample_region(low, *out_size, np.arange(out_size[0]), np.arange(out_size[1]))
    # Same taps and weights as PyTorch; float32 rounding of the sums may differ by an ulp.
    assert np.abs(got - full).max() <= 2.5e-7
    rows = np.array([0, out_size[0] - 1, out_size[0] // 2])
    cols = np.arange(0, out_size[1], 3)
    np.testing.assert_array_equal(ops.upsample_region(low, *out_size, rows, cols), got[:, rows][:, :, cols])


def test_upsampled_tiles_are_crops_of_the_reflected_full_map():
    low = _rng(1).random((3, 12, 9), dtype=np.float32)
    height, width, tile = 50, 37, 32
    full = ops.upsample_region(low, height, width, np.arange(height), np.arange(width))
    padded = np.pad(full, ((0, 0), (40, 40), (40, 40)), mode="reflect")
    offsets = np.array([[0, 0], [-8, 20], [30, 16], [-40, -40]])
    tiles = ops.upsampled_tiles(low, height, width, offsets, tile)
    for (top, left), crop in zip(offsets, tiles):
        np.testing.assert_array_equal(crop, padded[:, top + 40 : top + 40 + tile, left + 40 : left + 40 + tile])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("in_size,out_size", [((100, 80), (33, 20)), ((37, 53), (512, 300)), ((5, 5), (10, 3)),
                                              ((1, 1), (4, 4)), ((13, 13), (13, 13)), ((400, 90), (64, 7))])
def test_resize_image_matches_torch_antialiased_bilinear(dtype, in_size, out_size):
    rng = _rng(2)
    if dtype == np.float32:
        image = rng.random((*in_size, 3), dtype=np.float32)
        unit = image
    else:
        top = np.iinfo(dtype).max
        image = rng.integers(0, top + 1, (*in_size, 3), dtype=dtype)
        unit = image.astype(np.float32) / top
    reference = F.interpolate(torch.from_numpy(unit).permute(2, 0, 1)[None], out_size, mode="bilinear",
                              align_corners=False, antialias=True)[0].permute(1, 2, 0).numpy()
    got = ops.resize_image(image, *out_size, chunk_rows=7)
    assert got.dtype == np.float32 and got.shape == (*out_size, 3)
    assert np.abs(got - reference).max() < 5e-6
    np.testing.assert_array_equal(got, ops.resize_image(image, *out_size, chunk_rows=10_000))


def test_resize_rejects_bad_sizes():
    with pytest.raises(InputError, match="positive"):
        ops.resize_image(np.zeros((4, 4, 3), np.uint8), 0, 3)


@pytest.mark.parametrize("tile", [32, (20, 36)])
def test_preprocess_tiles_are_normalised_crops_of_the_reflect_padded_image(tile):
    rng = _rng(3)
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [-10, 50], [30, -20], [20, 64], [-100, 140]])  # far outside too
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = ops.preprocess_tiles(image, offsets, tile, mean, std)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    assert got.shape == (len(offsets), 3, th, tw)
    padded = np.pad(image, ((110, 110), (110, 110), (0, 0)), mode="reflect").astype(np.float32)
    normalised = (padded / np.float32(255) - np.float32(mean)) / np.float32(std)
    for (top, left), crop in zip(offsets, got):
        want = normalised[top + 110 : top + 110 + th, left + 110 : left + 110 + tw].transpose(2, 0, 1)
        np.testing.assert_array_equal(crop, want)


def test_preprocess_tiles_scales_16_bit_and_float_like_8_bit():
    rng = _rng(4)
    image8 = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [-3, 10]])
    args = (offsets, 16, (0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    base = ops.preprocess_tiles(image8, *args)
    np.testing.assert_allclose(ops.preprocess_tiles(image8.astype(np.uint16) * 257, *args), base, atol=1e-5)
    np.testing.assert_allclose(ops.preprocess_tiles(image8.astype(np.float32) / 255, *args), base, atol=1e-5)


def test_preprocess_tiles_rejects_non_rgb():
    with pytest.raises(InputError, match="H x W x 3"):
        ops.preprocess_tiles(np.zeros((8, 8), np.uint8), np.zeros((1, 2)), 8, (0, 0, 0), (1, 1, 1))
    with pytest.raises(InputError, match="uint8 or uint16 or float32"):
        ops.preprocess_tiles(np.zeros((8, 8, 3), np.int32), np.zeros((1, 2)), 8, (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize("tile", [(16, 16), (12, 20)])
def test_stitch_accumulate_sums_in_batch_order_and_takes_every_window_form(tile):
    rng = _rng(5)
    tiles = rng.random((4, *tile), dtype=np.float32)
    window = rng.random(tile, dtype=np.float32)
    offsets = np.array([[0, 0], [8, 8], [-4, 20], [25, -6]])
    acc, weight = np.zeros((30, 30), np.float32), np.zeros((30, 30), np.float32)
    ops.stitch_accumulate(acc, weight, tiles, window, offsets)
    acc_loop, weight_loop = np.zeros_like(acc), np.zeros_like(weight)
    for b, (top, left) in enumerate(offsets):  # pixel by pixel, tiles in batch order
        for ty in range(tile[0]):
            for tx in range(tile[1]):
                y, x = top + ty, left + tx
                if 0 <= y < 30 and 0 <= x < 30:
                    acc_loop[y, x] += tiles[b, ty, tx] * window[ty, tx]
                    weight_loop[y, x] += window[ty, tx]
    np.testing.assert_array_equal(acc, acc_loop)
    np.testing.assert_array_equal(weight, weight_loop)
    for stack, index in ((np.repeat(window[None], 4, 0), None), (window[None], np.zeros(4, np.int64))):
        acc_b, weight_b = np.zeros_like(acc), np.zeros_like(weight)
        ops.stitch_accumulate(acc_b, weight_b, tiles, stack, offsets, index)
        np.testing.assert_array_equal(acc_b, acc)
        np.testing.assert_array_equal(weight_b, weight)


def test_stitch_normalize_refuses_uncovered_pixels():
    acc = np.ones((3, 3), np.float32)
    weight = np.ones((3, 3), np.float32)
    weight[1, 2] = 0
    with pytest.raises(InputError, match=r"y=1, x=2"):
        ops.stitch_normalize(acc, weight)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fuse_band_is_models_fusion_of_the_upsampled_trimap_clamped(kind):
    rng = _rng(6)
    low = torch.softmax(torch.from_numpy(rng.normal(size=(3, 7, 5)).astype(np.float32)) * 3, dim=0).numpy()
    height, width, first, rows = 30, 11, 5, 9
    detail = rng.uniform(-0.3, 1.3, size=(rows, width)).astype(np.float32)
    trimap = torch.from_numpy(ops.upsample_region(low, height, width, np.arange(first, first + rows), np.arange(width)))
    expected = FUSIONS[kind](trimap[None], torch.from_numpy(detail)[None, None])[0, 0].clamp(0, 1).numpy()
    np.testing.assert_array_equal(ops.fuse_band(low, detail, first, height, kind), expected)
