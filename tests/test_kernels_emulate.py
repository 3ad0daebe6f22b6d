"""Check 2 of the kernels: the CUDA sources run on the CPU (g++ host emulation of the thread
grid) through the same launch code as on a GPU, against the NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.errors import InputError
from mattrt.fusion_kinds import FUSION_KINDS
from mattrt.imageio import quantise
from mattrt.kernels import attention_pool, emulate, fusion, max_unpool, morphology, preprocess, stitch
from mattrt.kernels.launch import Backend

pytestmark = pytest.mark.skipif(bool(emulate.skip_reason()), reason=emulate.skip_reason())


@pytest.fixture(scope="module")
def host():
    return emulate.host_backend()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pool_indices(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    _, indices = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding, return_indices=True)
    return indices.numpy()


def repeated_index_count(indices: np.ndarray) -> int:
    flat = indices.reshape(indices.shape[0] * indices.shape[1], -1)
    return sum(row.size - np.unique(row).size for row in flat)


# ---------------------------------------------------------------------------------------------
# max_unpool2d


@pytest.mark.parametrize("value_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("pool", ["aim_3x3_s2", "shm_2x2_s2"])
def test_max_unpool_matches_reference(host, rng, value_dtype, index_dtype, pool):
    # 37 x 29 input planes: neither the input nor the output plane is a multiple of the block.
    features = np.maximum(rng.standard_normal((2, 3, 37, 29)), 0).astype(np.float32)  # ReLU ties
    kernel, stride, padding = (3, 2, 1) if pool == "aim_3x3_s2" else (2, 2, 0)
    indices = pool_indices(features, kernel, stride, padding).astype(index_dtype)
    if pool == "aim_3x3_s2":
        assert repeated_index_count(indices) > 0  # overlapping windows chose the same pixel
    decoder = rng.standard_normal(indices.shape).astype(value_dtype)  # what gets unpooled
    got = max_unpool.launch(host, decoder, indices, (37, 29))
    want = max_unpool.max_unpool2d_reference(decoder, indices, (37, 29))
    assert got.dtype == want.dtype == value_dtype
    np.testing.assert_array_equal(got, want)


def test_max_unpool_last_input_wins_repeated_index(host):
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3)
    indices = np.array([[[[4, 0, 4], [0, 4, 1]]]], dtype=np.int64)
    got = max_unpool.launch(host, x, indices, (2, 3))
    # position 4 is chosen by inputs 0, 2 and 4 (values 1, 3, 5), position 0 by 1 and 3 (2, 4)
    np.testing.assert_array_equal(got.reshape(-1), [4, 6, 0, 0, 5, 0])
    np.testing.assert_array_equal(got, max_unpool.max_unpool2d_reference(x, indices, (2, 3)))


def test_max_unpool_arbitrary_scatter_many_planes(host, rng):
    x = rng.standard_normal((3, 5, 9, 11)).astype(np.float32)
    indices = rng.integers(0, 7 * 13, size=x.shape)  # many collisions, any order
    np.testing.assert_array_equal(max_unpool.launch(host, x, indices, (7, 13)),
                                  max_unpool.max_unpool2d_reference(x, indices, (7, 13)))


@pytest.mark.parametrize("bad", [-1, 20])
def test_max_unpool_bad_index_names_the_first(host, rng, bad):
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    indices = rng.integers(0, 20, size=x.shape)
    indices[1, 0, 2, 1] = bad
    indices[1, 1, 0, 0] = 999  # a later bad index is not the one reported
    for run in (lambda: max_unpool.launch(host, x, indices, (4, 5)),
                lambda: max_unpool.max_unpool2d_reference(x, indices, (4, 5))):
        with pytest.raises(InputError, match=rf"index {bad} at input position \(n=1, c=0, h=2, w=1\).*4 x 5"):
            run()


def test_max_unpool_unchecked_skips_bad_indices(host):
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)
    indices = np.array([[[[0, 1], [99, 3]]]], dtype=np.int32)
    got = max_unpool.launch(host, x, indices, (2, 2), check=False)
    np.testing.assert_array_equal(got.reshape(-1), [1, 2, 0, 4])


def test_max_unpool_writes_into_out(host, rng):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float16)
    indices = pool_indices(rng.standard_normal((1, 2, 8, 8)).astype(np.float32), 2, 2, 0)
    out = np.full((1, 2, 8, 8), 7, dtype=np.float16)
    assert max_unpool.launch(host, x, indices, (8, 8), out=out) is out
    np.testing.assert_array_equal(out, max_unpool.max_unpool2d_reference(x, indices, (8, 8)))


# ---------------------------------------------------------------------------------------------
# attention pooling / unpooling


TOLERANCE = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float16: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (1, 2, 4, 262), (3, 1, 2, 2), (2, 19, 4, 6)])  # 19: 3 chunks
def test_attention_pool_and_unpool_match_reference(host, rng, dtype, shape):
    n, c, h, w = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    a = (rng.standard_normal((n, 1, h, w)) * 4).astype(dtype)
    pooled = attention_pool.launch_pool(host, x, a)
    assert pooled.shape == (n, c, h // 2, w // 2) and pooled.dtype == dtype
    np.testing.assert_allclose(pooled.astype(np.float32),
                               attention_pool.attention_pool2d_reference(x, a).astype(np.float32), **TOLERANCE[dtype])
    y = rng.standard_normal((n, c, h // 2, w // 2)).astype(dtype)
    unpooled = attention_pool.launch_unpool(host, y, a)
    assert unpooled.shape == shape and unpooled.dtype == dtype
    np.testing.assert_allclose(unpooled.astype(np.float32),
                               attention_pool.attention_unpool2d_reference(y, a).astype(np.float32), **TOLERANCE[dtype])


def test_attention_extreme_logits_stay_finite(host):
    x = np.ones((1, 1, 2, 2), dtype=np.float32)
    a = np.array([[[[-200.0, 200.0], [0.0, 90.0]]]], dtype=np.float32)
    pooled = attention_pool.launch_pool(host, x, a)
    assert np.isfinite(pooled).all()
    np.testing.assert_allclose(pooled, 1.0, rtol=1e-6)  # weights sum to one
    unpooled = attention_pool.launch_unpool(host, np.full((1, 1, 1, 1), 2.0, np.float32), a)
    np.testing.assert_allclose(unpooled.reshape(-1), [0.0, 2.0, 1.0, 2.0], atol=1e-6)


def test_attention_rejects_odd_sizes_and_mismatches(host):
    with pytest.raises(InputError, match="even"):
        attention_pool.launch_pool(host, np.zeros((1, 2, 5, 4), np.float32), np.zeros((1, 1, 5, 4), np.float32))
    with pytest.raises(InputError, match="N x 1 x H x W"):
        attention_pool.launch_pool(host, np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(InputError, match="dtype of the features"):
        attention_pool.launch_unpool(host, np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 1, 4, 4), np.float16))


# ---------------------------------------------------------------------------------------------
# trimap fusion


@pytest.mark.parametrize("kind", list(FUSION_KINDS))
@pytest.mark.parametrize("logits", [True, False])
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float16, np.float32), (np.float32, np.float16)])
def test_trimap_fusion_matches_reference(host, rng, kind, logits, dtypes):
    trimap_dtype, detail_dtype = dtypes
    low = rng.standard_normal((2, 3, 7, 9)) * 2
    if not logits:
        low = np.exp(low) / np.exp(low).sum(axis=1, keepdims=True)
    trimap = low.astype(trimap_dtype)
    detail = rng.uniform(-0.2, 1.2, (2, 1, 30, 131)).astype(detail_dtype)  # 131 columns: two blocks
    got = fusion.launch(host, trimap, detail, kind, logits=logits)
    want = fusion.trimap_fusion_reference(trimap, detail, kind, logits=logits)
    assert got.shape == want.shape == (2, 1, 30, 131) and got.dtype == want.dtype == detail_dtype
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), **TOLERANCE[detail_dtype])


@pytest.mark.parametrize("size", [(5, 4), (16, 16), (3, 50)])
def test_trimap_fusion_downsampling_and_identity(host, rng, size):
    trimap = rng.random((1, 3, 16, 16)).astype(np.float32)
    detail = rng.random((1, 1, *size)).astype(np.float32)
    np.testing.assert_allclose(fusion.launch(host, trimap, detail, "aim_soft"),
                               fusion.trimap_fusion_reference(trimap, detail, "aim_soft"), rtol=1e-6, atol=1e-6)


def test_trimap_fusion_argmax_ties_go_to_the_lower_class(host):
    # same size: the upsampling is the identity, so the tie patterns reach the argmax unchanged
    rows = np.array([[1, 1, 1], [0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]],
                    dtype=np.float32)
    trimap = rows.T.reshape(1, 3, 1, 6).copy()
    detail = np.full((1, 1, 1, 6), 0.25, np.float32)
    got = fusion.launch(host, trimap, detail, "argmax_trimap")
    np.testing.assert_array_equal(got.reshape(-1), [0, 0, 0.25, 0, 1, 0.25])
    np.testing.assert_array_equal(got, fusion.trimap_fusion_reference(trimap, detail, "argmax_trimap"))


def test_trimap_fusion_rejects_bad_input(host):
    trimap = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(InputError, match="unknown fusion kind 'blend'"):
        fusion.launch(host, trimap, np.zeros((1, 1, 8, 8), np.float32), "blend")
    with pytest.raises(InputError, match="N x 1 x H x W with N = 1"):
        fusion.launch(host, trimap, np.zeros((2, 1, 8, 8), np.float32), "aim_soft")
    with pytest.raises(InputError, match=r"N x 3 x h x w"):
        fusion.launch(host, np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 1, 8, 8), np.float32), "aim_soft")


# ---------------------------------------------------------------------------------------------
# stitching


def random_tiles(rng, batch, tile, dtype):
    tiles = rng.random((batch, tile, tile)).astype(dtype)
    ramp = np.minimum(np.arange(tile) + 1, tile - np.arange(tile)).astype(np.float32)
    window = np.outer(ramp, ramp) / ramp.max() ** 2  # a tent window, zero-free
    return tiles, window.astype(np.float32)


@pytest.mark.parametrize("tile_dtype", [np.float32, np.float16])
def test_stitch_accumulate_is_bit_identical_to_reference(host, rng, tile_dtype):
    height, width, tile = 45, 150, 24
    acc, weight = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    acc_ref, weight_ref = acc.copy(), weight.copy()
    batches = [
        np.array([[0, 0], [0, 16], [16, 0], [16, 16], [-7, 140], [30, 130]]),  # overlaps, clipped edges
        np.array([[40, -10], [100, 100], [-30, -30], [21, 60]]),  # two tiles fully outside
    ]
    for offsets in batches:
        tiles, window = random_tiles(rng, len(offsets), tile, tile_dtype)
        stitch.launch_accumulate(host, acc, weight, tiles, window, offsets)
        stitch.stitch_accumulate_reference(acc_ref, weight_ref, tiles, window, offsets)
    np.testing.assert_array_equal(acc, acc_ref)
    np.testing.assert_array_equal(weight, weight_ref)
    assert (weight > 0).any() and (weight == 0).any()


def test_stitch_accumulate_more_tiles_than_one_launch_takes(host, rng):
    acc, weight = np.zeros((60, 70), np.float32), np.zeros((60, 70), np.float32)
    acc_ref, weight_ref = acc.copy(), weight.copy()
    offsets = rng.integers(-6, 66, size=(150, 2))  # 150 tiles: three launches of at most 64
    tiles, window = random_tiles(rng, 150, 8, np.float32)
    stitch.launch_accumulate(host, acc, weight, tiles, window, offsets)
    stitch.stitch_accumulate_reference(acc_ref, weight_ref, tiles, window, offsets)
    np.testing.assert_array_equal(acc, acc_ref)
    np.testing.assert_array_equal(weight, weight_ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_stitch_finalize_matches_reference(host, rng, dtype):
    weight = rng.uniform(0.1, 3.0, (33, 140)).astype(np.float32)
    acc = (rng.uniform(-0.3, 1.3, weight.shape) * weight).astype(np.float32)
    got = stitch.launch_finalize(host, acc, weight, dtype)
    want = stitch.stitch_finalize_reference(acc, weight, dtype)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)


def _ties(scale: int, levels: list[int]) -> np.ndarray:
    """float32 alphas whose float32 product with scale is exactly level + 0.5."""
    values = ((np.array(levels) + 0.5) / scale).astype(np.float32)
    assert (values * np.float32(scale) == np.array(levels, np.float32) + np.float32(0.5)).all()
    return values


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_stitch_finalize_rounds_like_imageio_quantise_half_to_even(host, dtype):
    scale = 255 if dtype == np.uint8 else 65535
    ties = _ties(scale, [0, 1, 2, 3, 100, 101])
    # alpha * 255 = 0.49999997: floor(x + 0.5) in float32 gives 1 there, the nearest level is 0
    below_half = np.nextafter(np.float32(0.5), np.float32(0)) / np.float32(scale)
    values = np.concatenate([ties, np.float32([below_half, 0.49 / scale, 1.0, 0.0, 2.0, -1.0])])[None].astype(np.float32)
    weight = np.ones_like(values)
    got = stitch.launch_finalize(host, values, weight, dtype)
    want = quantise(np.clip(values, 0, 1), 8 if dtype == np.uint8 else 16)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, stitch.stitch_finalize_reference(values, weight, dtype))
    np.testing.assert_array_equal(got[0, : len(ties)], np.rint(ties * np.float32(scale)))  # ties to even
    assert list(got[0, len(ties):]) == [0, 0, scale, 0, scale, 0]


def test_stitch_finalize_uncovered_pixels(host):
    acc = np.ones((4, 5), np.float32)
    weight = np.ones((4, 5), np.float32)
    weight[2, 3] = weight[3, 0] = 0.0
    for run in (lambda: stitch.launch_finalize(host, acc, weight, np.uint8),
                lambda: stitch.stitch_finalize_reference(acc, weight, np.uint8)):
        with pytest.raises(InputError, match=r"pixel \(y=2, x=3\) has zero blending weight"):
            run()
    got = stitch.launch_finalize(host, acc, weight, np.uint16, uncovered="zero")
    assert got[2, 3] == 0 and got[3, 0] == 0 and got[0, 0] == 65535
    np.testing.assert_array_equal(got, stitch.stitch_finalize_reference(acc, weight, np.uint16, uncovered="zero"))


# ---------------------------------------------------------------------------------------------
# preprocessing

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_preprocess_matches_reference_with_reflection_everywhere(host, rng, dtype):
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [-10, -12], [15, 20], [-40, 50], [60, -70], [5, 10]])  # far outside too
    got = preprocess.launch(host, image, offsets, 20, MEAN, STD, dtype)
    want = preprocess.preprocess_tiles_reference(image, offsets, 20, MEAN, STD, dtype)
    assert got.shape == (6, 3, 20, 20) and got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_preprocess_large_tile_and_thin_images(host, rng):
    for shape in [(1, 7, 3), (9, 1, 3), (2, 2, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        offsets = np.array([[-3, -2], [1, 0]])
        np.testing.assert_array_equal(preprocess.launch(host, image, offsets, 5, MEAN, STD),
                                      preprocess.preprocess_tiles_reference(image, offsets, 5, MEAN, STD))
    image = rng.integers(0, 256, (40, 300, 3), dtype=np.uint8)
    offsets = np.array([[-5, -20]])
    np.testing.assert_array_equal(preprocess.launch(host, image, offsets, 140, MEAN, STD),
                                  preprocess.preprocess_tiles_reference(image, offsets, 140, MEAN, STD))


def test_preprocess_rejects_bad_input(host):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="H x W x 3"):
        preprocess.launch(host, np.zeros((8, 8, 4), np.uint8), [[0, 0]], 4, MEAN, STD)
    with pytest.raises(InputError, match="dtype uint8 or uint16 or float32"):  # float64 images: convert first
        preprocess.launch(host, image.astype(np.float64), [[0, 0]], 4, MEAN, STD)
    with pytest.raises(InputError, match="B x 2"):
        preprocess.launch(host, image, [0, 0], 4, MEAN, STD)
    with pytest.raises(InputError, match="std must be non-zero"):
        preprocess.launch(host, image, [[0, 0]], 4, MEAN, (1, 0, 1))
    with pytest.raises(InputError, match="float32 or float16"):
        preprocess.launch(host, image, [[0, 0]], 4, MEAN, STD, np.uint8)


# ---------------------------------------------------------------------------------------------
# erosion / dilation


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("shape", [(19, 140), (2, 3, 11, 7)])
@pytest.mark.parametrize("radius", [0, 1, 4, 30])
def test_morphology_matches_reference(host, rng, dtype, shape, radius):
    mask = (rng.random(shape) * 255).astype(dtype)
    for take_max, reference in ((False, morphology.erode_reference), (True, morphology.dilate_reference)):
        got = morphology.launch(host, mask, radius, take_max=take_max)
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(got, reference(mask, radius))


# ---------------------------------------------------------------------------------------------
# layout and device errors shared by all launchers


def test_launchers_reject_non_contiguous_wrong_dtype_and_mismatched_shapes(host, rng):
    x = rng.standard_normal((1, 2, 4, 6)).astype(np.float32)
    indices = np.zeros(x.shape, np.int64)
    with pytest.raises(InputError, match="C-contiguous NumPy array .* of layout N x C x H x W.*not C-contiguous"):
        max_unpool.launch(host, x[..., ::2], indices[..., ::2], (4, 6))
    with pytest.raises(InputError, match="dtype float32 or float16; got .* dtype float64"):
        max_unpool.launch(host, x.astype(np.float64), indices, (4, 6))
    with pytest.raises(InputError, match="dtype int64 or int32; got .* dtype float32"):
        max_unpool.launch(host, x, indices.astype(np.float32), (4, 6))
    with pytest.raises(InputError, match="indices must have the shape of x"):
        max_unpool.launch(host, x, indices[:, :1].copy(), (4, 6))
    with pytest.raises(InputError, match=r"output_size must be \(H_out, W_out\)"):
        max_unpool.launch(host, x, indices, 24)
    with pytest.raises(InputError, match="mask must be H x W or N x C x H x W"):
        morphology.launch(host, np.zeros((2, 3, 4), np.float32), 1, take_max=True)
    with pytest.raises(InputError, match="radius must be a non-negative integer"):
        morphology.launch(host, np.zeros((3, 4), np.float32), -1, take_max=True)
    with pytest.raises(InputError, match="window must be T x T"):
        stitch.launch_accumulate(host, np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32),
                                 np.zeros((1, 4, 4), np.float32), np.zeros((5, 5), np.float32), [[0, 0]])
    with pytest.raises(InputError, match="offsets has 2 rows but there are 1 tiles"):
        stitch.launch_accumulate(host, np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32),
                                 np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.float32), [[0, 0], [1, 1]])
    with pytest.raises(InputError, match="out must have shape"):
        max_unpool.launch(host, x, indices, (4, 6), out=np.zeros((1, 2, 4, 5), np.float32))


class _GpuArrayStandIn:
    """Something that says it lives in GPU memory (as CuPy arrays and CUDA tensors do)."""

    __cuda_array_interface__ = {"shape": (1, 1, 2, 2), "typestr": "<f4", "data": (0, False), "version": 3}
    shape, dtype, ndim = (1, 1, 2, 2), np.dtype(np.float32), 4


def test_device_mismatch_errors_say_where_the_array_must_live(host):
    with pytest.raises(InputError, match=r"NumPy array \(host memory\).*GPU memory.*copy it to the host first"):
        max_unpool.launch(host, _GpuArrayStandIn(), np.zeros((1, 1, 2, 2), np.int64), (2, 2))
    with pytest.raises(InputError, match=r"the reference runs on the host"):
        max_unpool.max_unpool2d_reference(_GpuArrayStandIn(), np.zeros((1, 1, 2, 2), np.int64), (2, 2))

    class CupyLikeBackend(Backend):  # the CuPy backend's checks, without needing CuPy
        name, array_name, xp = "cupy", "CuPy array (GPU memory)", np

        def is_array(self, value):
            return isinstance(value, _GpuArrayStandIn)

    with pytest.raises(InputError, match=r"must be a C-contiguous CuPy array.*host memory.*cupy\.asarray"):
        attention_pool.launch_pool(CupyLikeBackend(), np.zeros((1, 1, 2, 2), np.float32), _GpuArrayStandIn())


def test_launch_checks_scalar_widths_against_the_c_signature(host):
    x = np.zeros((1, 1, 2, 2), np.float32)
    args = (x, x, np.zeros((1, 1, 1, 1), np.float32), np.int64(1), np.int64(1), np.int32(2), np.int64(2), np.int64(1))
    with pytest.raises(TypeError, match=r"argument height \(long long\) must be a numpy.int64, got int32"):
        host.launch("attention_pool.cu", "attention_pool2d_f32", (1, 1, 1), (128, 1, 1), args)
    with pytest.raises(TypeError, match="argument a must have dtype float32, got float16"):
        host.launch("attention_pool.cu", "attention_pool2d_f32", (1, 1, 1), (128, 1, 1),
                    (x, x.astype(np.float16), *args[2:]))
