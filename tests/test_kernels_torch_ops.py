"""torch.ops.mattrt.* (CPU path and opcheck), and the launchers' behaviour without a GPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.availability import available
from mattrt.errors import InputError, MissingDependencyError
from mattrt.kernels import (
    attention_pool2d,
    attention_pool2d_reference,
    attention_unpool2d_reference,
    max_unpool2d,
    max_unpool2d_reference,
    stitch_finalize,
    torch_ops,  # noqa: F401  (registers torch.ops.mattrt.*)
    trimap_fusion,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(7)


def test_importing_kernels_needs_neither_cupy_nor_torch():
    code = "import sys, mattrt.kernels; print(sorted(m for m in ('cupy', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(available("cupy_device"), reason="this machine has a CUDA device for CuPy")
def test_cupy_launchers_say_what_is_missing():
    x = np.zeros((1, 1, 2, 2), np.float32)
    for call in (lambda: max_unpool2d(x, np.zeros(x.shape, np.int64), (2, 2)),
                 lambda: attention_pool2d(x, x),
                 lambda: trimap_fusion(np.zeros((1, 3, 2, 2), np.float32), x, "aim_soft"),
                 lambda: stitch_finalize(x[0, 0], x[0, 0], np.uint8)):
        with pytest.raises(MissingDependencyError, match="launching the mattrt CUDA kernels needs cupy_device"):
            call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_max_unpool_op_cpu(gen, dtype, index_dtype):
    features = torch.relu(torch.randn(2, 3, 19, 22, generator=gen))
    _, indices = F.max_pool2d(features, 3, 2, 1, return_indices=True)
    decoder = torch.randn(indices.shape, generator=gen).to(dtype)
    got = torch.ops.mattrt.max_unpool2d(decoder, indices.to(index_dtype), 19, 22)
    assert got.dtype == dtype and got.shape == (2, 3, 19, 22)
    np.testing.assert_array_equal(got.numpy(), max_unpool2d_reference(decoder.numpy(), indices.numpy(), (19, 22)))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = torch.ops.aten.max_unpool2d(decoder, indices, [19, 22])
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_max_unpool_op_rejects_out_of_range_indices():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(InputError, match="index 4 at flat input position 3 is outside the 2 x 2 output plane"):
        torch.ops.mattrt.max_unpool2d(x, torch.tensor([[[[0, 1], [2, 4]]]]), 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_ops_cpu(gen, dtype):
    x = torch.randn(2, 4, 10, 6, generator=gen).to(dtype)
    a = (3 * torch.randn(2, 1, 10, 6, generator=gen)).to(dtype)
    pooled = torch.ops.mattrt.attention_pool2d(x, a)
    assert pooled.dtype == dtype and pooled.shape == (2, 4, 5, 3)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(pooled.float().numpy(), attention_pool2d_reference(x.numpy(), a.numpy()).astype(np.float32),
                               **tolerance)
    unpooled = torch.ops.mattrt.attention_unpool2d(pooled, a)
    assert unpooled.dtype == dtype and unpooled.shape == x.shape
    np.testing.assert_allclose(unpooled.float().numpy(),
                               attention_unpool2d_reference(pooled.numpy(), a.numpy()).astype(np.float32), **tolerance)


def test_attention_ops_reject_bad_shapes():
    with pytest.raises(InputError, match="must be even"):
        torch.ops.mattrt.attention_pool2d(torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4))
    with pytest.raises(InputError, match="N x 1 x H x W"):
        torch.ops.mattrt.attention_unpool2d(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2))


def test_opcheck_max_unpool(gen):
    features = torch.randn(1, 2, 9, 8, generator=gen)
    _, indices = F.max_pool2d(features, 3, 2, 1, return_indices=True)
    decoder = torch.randn(indices.shape, generator=gen)
    torch.library.opcheck(torch.ops.mattrt.max_unpool2d.default, (decoder, indices, 9, 8))


def test_opcheck_attention(gen):
    x = torch.randn(1, 3, 8, 6, generator=gen)
    a = torch.randn(1, 1, 8, 6, generator=gen)
    torch.library.opcheck(torch.ops.mattrt.attention_pool2d.default, (x, a))
    torch.library.opcheck(torch.ops.mattrt.attention_unpool2d.default, (torch.randn(1, 3, 4, 3, generator=gen), a))


def test_ops_trace_with_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 32, 48)
        a = torch.empty(2, 1, 32, 48)
        assert torch.ops.mattrt.attention_pool2d(x, a).shape == (2, 8, 16, 24)
        assert torch.ops.mattrt.attention_unpool2d(torch.empty(2, 8, 16, 24), a).shape == (2, 8, 32, 48)
        indices = torch.empty(2, 8, 16, 24, dtype=torch.int64)
        assert torch.ops.mattrt.max_unpool2d(torch.empty(2, 8, 16, 24), indices, 33, 48).shape == (2, 8, 33, 48)
