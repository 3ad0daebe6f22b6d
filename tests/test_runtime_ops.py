"""mattrt.runtime.ops: coordinates, resampling, tile crops, stitching and fusion against
PyTorch and the kernels' NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.errors import InputError
from mattrt.kernels.preprocess import preprocess_tiles_reference
from mattrt.kernels.stitch import stitch_accumulate_reference
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


def test_preprocess_tiles_matches_the_kernel_reference():
    rng = _rng(3)
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [-10, 50], [30, -20], [20, 64], [-100, 140]])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = ops.preprocess_tiles(image, offsets, 32, mean, std)
    expected = preprocess_tiles_reference(image, offsets, 32, mean, std)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


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
    with pytest.raises(InputError, match="uint8, uint16 or float32"):
        ops.preprocess_tiles(np.zeros((8, 8, 3), np.int32), np.zeros((1, 2)), 8, (0, 0, 0), (1, 1, 1))


def test_stitch_accumulate_matches_the_kernel_reference_and_takes_per_tile_windows():
    rng = _rng(5)
    tiles = rng.random((4, 16, 16), dtype=np.float32)
    window = rng.random((16, 16), dtype=np.float32)
    offsets = np.array([[0, 0], [8, 8], [-4, 20], [25, -6]])
    acc, weight = np.zeros((30, 30), np.float32), np.zeros((30, 30), np.float32)
    ops.stitch_accumulate(acc, weight, tiles, window, offsets)
    acc_ref, weight_ref = np.zeros_like(acc), np.zeros_like(weight)
    stitch_accumulate_reference(acc_ref, weight_ref, tiles, window, offsets)
    np.testing.assert_array_equal(acc, acc_ref)
    np.testing.assert_array_equal(weight, weight_ref)
    acc_b, weight_b = np.zeros_like(acc), np.zeros_like(weight)
    ops.stitch_accumulate(acc_b, weight_b, tiles, np.repeat(window[None], 4, 0), offsets)
    np.testing.assert_array_equal(acc_b, acc)


def test_stitch_normalize_refuses_uncovered_pixels():
    acc = np.ones((3, 3), np.float32)
    weight = np.ones((3, 3), np.float32)
    weight[1, 2] = 0
    with pytest.raises(InputError, match=r"y=1, x=2"):
        ops.stitch_normalize(acc, weight)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fuse_is_models_fusion_clamped(kind):
    rng = _rng(6)
    trimap = torch.softmax(torch.from_numpy(rng.normal(size=(1, 3, 9, 11)).astype(np.float32)) * 3, dim=1)
    detail = torch.from_numpy(rng.uniform(-0.3, 1.3, size=(1, 1, 9, 11)).astype(np.float32))
    expected = FUSIONS[kind](trimap, detail)[0, 0].clamp(0, 1).numpy()
    got = ops.fuse(trimap[0].numpy(), detail[0, 0].numpy(), kind)
    np.testing.assert_array_equal(got, expected)
