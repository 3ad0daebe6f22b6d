"""The NumPy references of the kernels against independent implementations: PyTorch
(F.max_unpool2d, F.interpolate, models.fusion, unfold/softmax, reflect pad) and SciPy."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from mattrt.errors import InputError
from mattrt.fusion_kinds import FUSION_KINDS, fusion_kind
from mattrt.kernels import (
    attention_pool2d_reference,
    attention_unpool2d_reference,
    dilate_reference,
    erode_reference,
    max_unpool2d_reference,
    preprocess_tiles_reference,
    stitch_accumulate_reference,
    stitch_finalize_reference,
    trimap_fusion_reference,
)
from mattrt.kernels.fusion import NUMPY_FUSIONS, fuse, upsample_region
from mattrt.models.fusion import FUSIONS, get_fusion


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@contextlib.contextmanager
def torch_single_thread():
    """PyTorch's CPU max_unpool is last-write-wins only within one thread's chunk of the input."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("pool", [(3, 2, 1), (2, 2, 0), (3, 2, 0)])
def test_max_unpool_reference_equals_torch(rng, dtype, pool):
    kernel, stride, padding = pool
    features = torch.from_numpy(np.maximum(rng.standard_normal((2, 4, 23, 30)), 0).astype(np.float32))
    pooled, indices = F.max_pool2d(features, kernel, stride, padding, return_indices=True)
    decoder = torch.from_numpy(rng.standard_normal(tuple(pooled.shape)).astype(dtype))
    with torch_single_thread():
        want = F.max_unpool2d(decoder, indices, kernel, stride, padding, output_size=features.shape[2:])
    for index_dtype in (np.int64, np.int32):
        got = max_unpool2d_reference(decoder.numpy(), indices.numpy().astype(index_dtype), (23, 30))
        np.testing.assert_array_equal(got, want.numpy())


def test_max_unpool_reference_repeated_indices_follow_torch_cpu(rng):
    x = torch.from_numpy(rng.standard_normal((3, 2, 6, 6)).astype(np.float32))
    indices = torch.from_numpy(rng.integers(0, 10, size=(3, 2, 6, 6)))  # 36 inputs onto 10 positions
    with torch_single_thread():
        want = torch.ops.aten.max_unpool2d(x, indices, [2, 5])
    np.testing.assert_array_equal(max_unpool2d_reference(x.numpy(), indices.numpy(), (2, 5)), want.numpy())


def test_max_unpool_reference_rejects_bad_indices_like_torch():
    x = np.zeros((1, 1, 2, 2), np.float32)
    indices = np.array([[[[0, 1], [9, 2]]]])
    with pytest.raises(RuntimeError, match="invalid max index"):
        torch.ops.aten.max_unpool2d(torch.from_numpy(x), torch.from_numpy(indices), [3, 3])
    with pytest.raises(InputError, match=r"index 9 at input position \(n=0, c=0, h=1, w=0\)"):
        max_unpool2d_reference(x, indices, (3, 3))


def attention_pool_with_unfold(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The spec in torch, through unfold: the windows as columns, softmax per column."""
    n, c, h, w = x.shape
    weights = torch.softmax(F.unfold(torch.sigmoid(a), 2, stride=2), dim=1)  # N x 4 x L
    columns = F.unfold(x, 2, stride=2).reshape(n, c, 4, -1)
    return (columns * weights[:, None]).sum(dim=2).reshape(n, c, h // 2, w // 2)


@pytest.mark.parametrize("shape", [(2, 5, 8, 12), (1, 1, 2, 2), (3, 2, 14, 6)])
def test_attention_references_equal_torch(rng, shape):
    n, c, h, w = shape
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    a = torch.from_numpy((rng.standard_normal((n, 1, h, w)) * 3).astype(np.float32))
    np.testing.assert_allclose(attention_pool2d_reference(x.numpy(), a.numpy()), attention_pool_with_unfold(x, a).numpy(),
                               rtol=1e-5, atol=1e-6)
    y = torch.from_numpy(rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32))
    want = torch.sigmoid(a) * F.interpolate(y, scale_factor=2, mode="nearest")
    np.testing.assert_allclose(attention_unpool2d_reference(y.numpy(), a.numpy()), want.numpy(), rtol=1e-6, atol=1e-7)


def test_attention_references_in_half_precision_round_once(rng):
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float16)
    a = rng.standard_normal((1, 1, 6, 6)).astype(np.float16)
    want = attention_pool_with_unfold(torch.from_numpy(x).float(), torch.from_numpy(a).float()).half()
    got = attention_pool2d_reference(x, a)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.numpy().astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", list(FUSIONS))
@pytest.mark.parametrize("logits", [True, False])
@pytest.mark.parametrize("sizes", [((7, 9), (30, 41)), ((16, 16), (64, 64)), ((20, 24), (9, 10)), ((5, 5), (5, 5))])
def test_trimap_fusion_reference_equals_interpolate_and_models_fusion(rng, kind, logits, sizes):
    (low_h, low_w), (height, width) = sizes
    low = torch.from_numpy((rng.standard_normal((2, 3, low_h, low_w)) * 2).astype(np.float32))
    if not logits:
        low = torch.softmax(low, dim=1)
    detail = torch.from_numpy(rng.uniform(-0.2, 1.2, (2, 1, height, width)).astype(np.float32))
    upsampled = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    probabilities = torch.softmax(upsampled, dim=1) if logits else upsampled
    want = FUSIONS[kind](probabilities, detail).numpy()
    got = trimap_fusion_reference(low.numpy(), detail.numpy(), kind, logits=logits)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_bilinear_upsampling_equals_interpolate_exactly_enough(rng):
    low = rng.standard_normal((1, 3, 13, 17)).astype(np.float32)
    for size in [(100, 37), (13, 17), (6, 40)]:
        want = F.interpolate(torch.from_numpy(low), size=size, mode="bilinear", align_corners=False).numpy()
        got = upsample_region(low, *size, np.arange(size[0]), np.arange(size[1]))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_one_fusion_table_for_torch_numpy_and_the_kernel():
    assert list(FUSIONS) == list(NUMPY_FUSIONS) == list(FUSION_KINDS)
    assert sorted(kind.code for kind in FUSION_KINDS.values()) == list(range(len(FUSION_KINDS)))
    # the same message wherever an unknown kind is met
    for reject in (fusion_kind, get_fusion, lambda k: fuse(np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32), k),
                   lambda k: trimap_fusion_reference(np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32), k)):
        with pytest.raises(InputError, match=r"^unknown fusion kind 'blend'; known: unknown_blend, aim_soft, argmax_trimap$"):
            reject("blend")


@pytest.mark.parametrize("kind", list(FUSION_KINDS))
def test_numpy_fusion_formulas_equal_the_torch_formulas_bit_for_bit(rng, kind):
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(2, 3, 9, 11)).astype(np.float32)) * 3, dim=1)
    probabilities[0, :, 0, :3] = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])  # argmax ties
    detail = torch.from_numpy(rng.uniform(-0.3, 1.3, size=(2, 1, 9, 11)).astype(np.float32))
    got = fuse(probabilities.numpy(), detail.numpy(), kind)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, FUSIONS[kind](probabilities, detail).numpy())


def test_preprocess_reference_equals_torch_reflect_pad(rng):
    image = rng.integers(0, 256, (21, 26, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tile = 16
    offsets = np.array([[-5, -9], [0, 0], [10, 15], [-15, 20]])  # within one reflection (torch's limit)
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    normalised = (chw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    padded = F.pad(normalised, (20, 20, 20, 20), mode="reflect")
    want = torch.cat([padded[:, :, 20 + t: 20 + t + tile, 20 + l: 20 + l + tile] for t, l in offsets.tolist()])
    got = preprocess_tiles_reference(image, offsets, tile, mean, std)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    half = preprocess_tiles_reference(image, offsets, tile, mean, std, np.float16)
    np.testing.assert_array_equal(half, got.astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("radius", [0, 1, 2, 5, 40])
def test_morphology_references_equal_scipy(rng, dtype, radius):
    size = 2 * radius + 1
    plane = (rng.random((17, 23)) * 255).astype(dtype)
    np.testing.assert_array_equal(erode_reference(plane, radius), ndi.grey_erosion(plane, size=(size, size), mode="nearest"))
    np.testing.assert_array_equal(dilate_reference(plane, radius), ndi.grey_dilation(plane, size=(size, size), mode="nearest"))
    batch = (rng.random((2, 3, 9, 12)) * 255).astype(dtype)
    np.testing.assert_array_equal(erode_reference(batch, radius),
                                  ndi.grey_erosion(batch, size=(1, 1, size, size), mode="nearest"))
    np.testing.assert_array_equal(dilate_reference(batch, radius),
                                  ndi.grey_dilation(batch, size=(1, 1, size, size), mode="nearest"))


def test_stitch_references_blend_overlaps_and_clip_edges(rng):
    height, width, tile = 10, 12, 6
    acc, weight = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    tiles = rng.random((3, tile, tile)).astype(np.float32)
    window = rng.uniform(0.5, 1.0, (tile, tile)).astype(np.float32)
    offsets = [[0, 0], [3, 4], [7, 9]]  # the last tile reaches past the bottom-right corner
    stitch_accumulate_reference(acc, weight, tiles, window, offsets)
    # pixel by pixel: the weighted mean of the tiles that cover it
    for y in range(height):
        for x in range(width):
            covering = [(b, y - t, x - l) for b, (t, l) in enumerate(offsets) if 0 <= y - t < tile and 0 <= x - l < tile]
            assert weight[y, x] == pytest.approx(sum(window[ty, tx] for _, ty, tx in covering), rel=1e-6)
            assert acc[y, x] == pytest.approx(sum(tiles[b, ty, tx] * window[ty, tx] for b, ty, tx in covering), rel=1e-6)
    alpha = stitch_finalize_reference(acc, weight, np.float32, uncovered="zero")
    covered = weight > 0
    np.testing.assert_allclose(alpha[covered], np.clip(acc[covered] / weight[covered], 0, 1), rtol=1e-6)
    assert (alpha[~covered] == 0).all() and (~covered).any()
    quantised = stitch_finalize_reference(acc, weight, np.uint16, uncovered="zero")
    assert np.abs(quantised - alpha.astype(np.float64) * 65535).max() <= 0.5 + 1e-2  # nearest level
