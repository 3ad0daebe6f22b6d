"""The refinement's kernels (kernels/guided_filter.cu): the g++ host emulation of the sources
against the NumPy references on random shapes (bit for bit), and the references against
independent float64 formulations (scipy box filters, He et al.'s guided filter with a 3 x 3
solve, the research prototype's band). NVRTC compiles the source in test_kernels_compile.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from mattrt.errors import InputError
from mattrt.kernels import emulate, guided_filter, morphology

needs_emulation = pytest.mark.skipif(bool(emulate.skip_reason()), reason=emulate.skip_reason())


@pytest.fixture(scope="module")
def host():
    return emulate.host_backend() if not emulate.skip_reason() else None


@pytest.fixture
def rng():
    return np.random.default_rng(1818)


def blocky_alpha(rng, height, width):
    """Alpha with hard 0 and 1 regions and soft values between (both kinds of seed)."""
    alpha = rng.random((height, width)).astype(np.float32)
    alpha[alpha < 0.35] = 0.0
    alpha[alpha > 0.7] = 1.0
    return alpha


# -- emulation == reference, bit for bit --------------------------------------------------------------
@needs_emulation
@pytest.mark.parametrize("shape, radius", [((1, 1, 1), 0), ((3, 1, 17), 2), ((2, 17, 1), 3), ((13, 37, 53), 5),
                                           ((4, 9, 14), 40), ((1, 130, 7), 1)])
def test_box_mean_emulation_equals_reference(host, rng, shape, radius):
    planes = (rng.random(shape) * 2 - 0.5).astype(np.float32)
    got = guided_filter.launch_box_mean(host, planes, radius)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, guided_filter.box_mean_reference(planes, radius))


@needs_emulation
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (8, 1), (23, 41), (64, 3)])
@pytest.mark.parametrize("low, high", [(0.02, 0.98), (0.0, 1.0), (0.3, 0.6)])
def test_band_seed_emulation_equals_reference(host, rng, shape, low, high):
    alpha = blocky_alpha(rng, *shape)
    got = guided_filter.launch_band_seed(host, alpha, low, high)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, guided_filter.band_seed_reference(alpha, low, high))


@needs_emulation
@pytest.mark.parametrize("region, window, offset, radius", [
    ((29, 47), (29, 47), (0, 0), 3),  # the whole region
    ((40, 61), (11, 20), (7, 30), 4),  # an inner window
    ((12, 9), (1, 1), (11, 8), 6),  # one corner pixel, radius past the region
    ((1, 33), (1, 10), (0, 5), 2),  # one row
    ((50, 2), (20, 2), (30, 0), 0),  # radius 0
])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_guided_filter_band_emulation_equals_reference(host, rng, region, window, offset, radius, eps):
    guide = rng.random((*region, 3), dtype=np.float32)
    p = blocky_alpha(rng, *region)
    alpha = rng.random(window, dtype=np.float32)
    band = (rng.random(window) > 0.4).astype(np.uint8)
    got = guided_filter.launch_guided_filter_band(host, guide, p, alpha, band, offset, radius, eps)
    want = guided_filter.guided_filter_band_reference(guide, p, alpha, band, offset, radius, eps)
    assert got.dtype == np.float32 and got.shape == window
    np.testing.assert_array_equal(got, want)
    outside = band == 0
    np.testing.assert_array_equal(got[outside], alpha[outside])  # alpha kept outside the band
    assert got.min() >= 0 and got.max() <= 1


@needs_emulation
def test_band_dilation_through_morphology_equals_reference(host, rng):
    seed = guided_filter.launch_band_seed(host, blocky_alpha(rng, 31, 44), 0.02, 0.98)
    np.testing.assert_array_equal(morphology.launch(host, seed, 5, take_max=True), morphology.dilate_reference(seed, 5))


# -- references against independent formulations ------------------------------------------------------
@pytest.mark.parametrize("shape, radius", [((3, 40, 57), 4), ((2, 9, 12), 7), ((1, 30, 30), 0)])
def test_box_mean_reference_is_the_clipped_window_mean(rng, shape, radius):
    planes = rng.random(shape).astype(np.float32)
    size = 2 * radius + 1
    counts = ndi.uniform_filter(np.ones(shape[1:]), size, mode="constant") * size * size
    for k in range(shape[0]):
        sums = ndi.uniform_filter(planes[k].astype(np.float64), size, mode="constant") * size * size
        np.testing.assert_allclose(guided_filter.box_mean_reference(planes, radius)[k], sums / counts, rtol=1e-6, atol=1e-7)


def test_band_seed_reference_is_the_prototypes_band(rng):
    alpha = blocky_alpha(rng, 50, 70)
    hard = alpha >= 0.5
    contour = hard ^ ndi.binary_erosion(hard, border_value=1)  # the research prototype's formulation
    want = ((alpha > np.float32(0.02)) & (alpha < np.float32(0.98))) | contour
    np.testing.assert_array_equal(guided_filter.band_seed_reference(alpha, 0.02, 0.98), want.astype(np.uint8))


def guided_filter_float64(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter in float64, the 3 x 3 systems solved by LAPACK."""
    guide, p = guide.astype(np.float64), p.astype(np.float64)
    size = 2 * radius + 1
    count = ndi.uniform_filter(np.ones(p.shape), size, mode="constant")

    def mean(x):
        return ndi.uniform_filter(x, size, mode="constant") / count

    mean_i = [mean(guide[..., c]) for c in range(3)]
    mean_p = mean(p)
    cov_ip = np.stack([mean(guide[..., c] * p) - mean_i[c] * mean_p for c in range(3)], -1)
    sigma = np.empty(p.shape + (3, 3))
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = mean(guide[..., i] * guide[..., j]) - mean_i[i] * mean_i[j] + (eps if i == j else 0.0)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]
    b = mean_p - sum(a[..., c] * mean_i[c] for c in range(3))
    return sum(mean(a[..., c]) * guide[..., c] for c in range(3)) + mean(b)


@pytest.mark.parametrize("flat", [False, True])
def test_guided_filter_reference_matches_float64(rng, flat):
    """float32 window statistics of a centred guide stay within 1e-4 of float64, flat regions included
    (measured: 3.7e-5 on the flat guide with 8-bit noise, 1e-6 on the smooth one)."""
    height, width, radius, eps = 60, 90, 6, 1e-5
    yy, xx = np.mgrid[0:height, 0:width]
    if flat:  # a nearly constant guide: a step of one 8-bit level and 8-bit noise
        guide = np.full((height, width, 3), 0.9, np.float32)
        guide[:, width // 2:, 1] += np.float32(1 / 255)
        guide += (rng.integers(0, 2, guide.shape) / 255).astype(np.float32)
    else:
        guide = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), (xx + yy) / (height + width)], -1) * 0.5 + 0.5
        guide = guide.astype(np.float32)
    p = (((xx - 45) ** 2 + (yy - 30) ** 2) < 400).astype(np.float32)
    ones = np.ones((height, width), np.uint8)
    got = guided_filter.guided_filter_band_reference(guide, p, p, ones, (0, 0), radius, eps)
    want = np.clip(guided_filter_float64(guide, p, radius, eps), 0, 1)
    assert np.abs(got - want).max() <= 1e-4


def test_guided_filter_window_with_full_halo_equals_the_whole_region(rng):
    """A window whose region reaches 2r beyond it gives the whole region's filter there."""
    guide = rng.random((70, 80, 3), dtype=np.float32)
    p = blocky_alpha(rng, 70, 80)
    radius, ones = 5, np.ones((70, 80), np.uint8)
    whole = guided_filter.guided_filter_band_reference(guide, p, p, ones, (0, 0), radius, 1e-5)
    y0, y1, x0, x1 = 25, 40, 30, 52
    g0, g1, h0, h1 = y0 - 2 * radius, y1 + 2 * radius, x0 - 2 * radius, x1 + 2 * radius
    part = guided_filter.guided_filter_band_reference(guide[g0:g1, h0:h1], p[g0:g1, h0:h1], p[y0:y1, x0:x1],
                                                      ones[y0:y1, x0:x1], (y0 - g0, x0 - h0), radius, 1e-5)
    np.testing.assert_allclose(part, whole[y0:y1, x0:x1], rtol=0, atol=1e-6)


# -- bad input -------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_by_references_and_launchers(host, rng):
    guide = rng.random((10, 12, 3), dtype=np.float32)
    p = rng.random((10, 12), dtype=np.float32)
    alpha, band = p[:4, :5].copy(), np.ones((4, 5), np.uint8)
    runs = [lambda *a, **k: guided_filter.guided_filter_band_reference(*a, **k)]
    if host is not None:
        runs.append(lambda *a, **k: guided_filter.launch_guided_filter_band(host, *a, **k))
    for run in runs:
        with pytest.raises(InputError, match="guide must be .*H x W x 3"):
            run(guide[..., :2], p, alpha, band, (0, 0), 2, 1e-5)
        with pytest.raises(InputError, match="guide must be H x W x 3 with p's H x W"):
            run(guide[:9], p, alpha, band, (0, 0), 2, 1e-5)
        with pytest.raises(InputError, match="dtype float32"):
            run(guide.astype(np.float64), p, alpha, band, (0, 0), 2, 1e-5)
        with pytest.raises(InputError, match="band must have alpha's shape"):
            run(guide, p, alpha, band[:3], (0, 0), 2, 1e-5)
        with pytest.raises(InputError, match="dtype uint8"):
            run(guide, p, alpha, band.astype(bool), (0, 0), 2, 1e-5)
        with pytest.raises(InputError, match=r"output window 4 x 5 at \(top=7, left=0\) does not lie inside"):
            run(guide, p, alpha, band, (7, 0), 2, 1e-5)
        with pytest.raises(InputError, match="radius must be a non-negative integer"):
            run(guide, p, alpha, band, (0, 0), -1, 1e-5)
        with pytest.raises(InputError, match="eps must be a positive finite number"):
            run(guide, p, alpha, band, (0, 0), 2, 0.0)
    with pytest.raises(InputError, match="need 0 <= low < 0.5 < high <= 1"):
        guided_filter.band_seed_reference(p, 0.6, 0.9)
    with pytest.raises(InputError, match="layout P x H x W"):
        guided_filter.box_mean_reference(p, 1)
    if host is not None:
        with pytest.raises(InputError, match="not C-contiguous"):
            guided_filter.launch_band_seed(host, p[:, ::2], 0.02, 0.98)
