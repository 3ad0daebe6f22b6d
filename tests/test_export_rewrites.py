"""The TensorRT-compatible rewrites of max_pool2d(return_indices=True) and max_unpool2d, checked
for exact equality with PyTorch's CPU kernels on inputs full of ties."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mattrt.engines.tensorrt.lint import lint_model
from mattrt.engines.tensorrt.rewrites import PoolGeometry, later_neighbour_offsets, pool_output_length
from mattrt.export.exporter import export_graph
from mattrt.export.parity import ort_session

# (kernel, stride, padding, dilation, ceil_mode): AIM's overlapping 3x3/s2, SHM's 2x2/s2, a
# stride-1 pool (radius 2 overlaps), ceil mode, and a dilated pool (TensorRT's MaxPool takes no
# dilation, so the values come from the slices).
POOLS = [
    (3, 2, 1, 1, False),
    (2, 2, 0, 1, False),
    (3, 1, 1, 1, False),
    (3, 2, 0, 1, True),
    (2, 2, 0, 1, True),
    (3, 2, 1, 2, False),
]
HEIGHT, WIDTH = 13, 16


class PoolUnpoolNet(nn.Module):
    """Every pool of POOLS on the same input; each unpools `2 * pooled + 1` (decoder-like values,
    not the pooled ones) with the pool's indices."""

    def forward(self, x):
        outputs = []
        for kernel, stride, padding, dilation, ceil in POOLS:
            values, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil, return_indices=True)
            extent = (kernel - 1) * dilation + 1  # max_unpool2d knows no dilation
            unpooled = F.max_unpool2d(values * 2.0 + 1.0, indices, extent, stride, padding, output_size=x.shape[-2:])
            outputs += [values, indices, unpooled]
        return tuple(outputs)


def output_names():
    return [f"{kind}{i}" for i in range(len(POOLS)) for kind in ("values", "indices", "unpooled")]


def tied_inputs(batch, seed):
    """ReLU of a coarse random field: most windows are all zeros, many hold repeated maxima."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 4, HEIGHT, WIDTH, generator=g).round() * (torch.rand(batch, 4, HEIGHT, WIDTH, generator=g) > 0.4)
    return torch.relu(coarse)


@pytest.fixture(scope="module")
def pool_graph():
    torch.manual_seed(0)
    proto = export_graph(PoolUnpoolNet(), (tied_inputs(2, 0),), ["x"], output_names(), max_batch=4, name="pools")
    return proto, ort_session(proto)


def test_rewritten_graph_has_no_op_tensorrt_rejects(pool_graph):
    proto, _ = pool_graph
    ops = {n.op_type for n in proto.graph.node}
    assert "MaxUnpool" not in ops and "ScatterND" not in ops
    assert "ScatterElements" in ops
    assert all(len([o for o in n.output if o]) == 1 for n in proto.graph.node if n.op_type == "MaxPool")
    assert lint_model(proto, "pools") == []


@pytest.mark.parametrize("batch,seed", [(1, 1), (3, 2), (4, 3)])
def test_pool_indices_and_unpool_equal_pytorch_with_ties(pool_graph, batch, seed):
    _, session = pool_graph
    x = tied_inputs(batch, seed)
    with torch.no_grad():
        expected = [t.numpy() for t in PoolUnpoolNet()(x)]
    got = session.run(None, {"x": x.numpy()})
    for name, want, have in zip(output_names(), expected, got):
        assert have.dtype == want.dtype, name
        np.testing.assert_array_equal(have, want, err_msg=name)


def test_constant_and_minus_infinity_windows(pool_graph):
    """All-equal windows keep their first in-bounds position; padding never wins, even where
    every in-bounds value is -inf."""
    _, session = pool_graph
    x = torch.zeros(1, 4, HEIGHT, WIDTH)
    x[:, 1] = 7.0
    x[:, 2] = float("-inf")
    x[:, 3, ::2] = float("-inf")
    with torch.no_grad():
        expected = [t.numpy() for t in PoolUnpoolNet()(x)]
    got = session.run(None, {"x": x.numpy()})
    lowest = np.finfo(np.float32).min
    for name, want, have in zip(output_names(), expected, got):
        if name.startswith("values"):  # onnxruntime's MaxPool reports -inf windows as the lowest float
            want, have = np.maximum(want, lowest), np.maximum(have, lowest)
        np.testing.assert_array_equal(have, want, err_msg=name)


def test_duplicate_writes_are_resolved_before_the_scatter(pool_graph):
    """Overlapping pools repeat indices; the scatter must receive each real target at most once
    per plane (the rest go to the discarded slot), so the write order of a backend is irrelevant."""
    proto, _ = pool_graph
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    scatters = [n for n in model.graph.node if n.op_type == "ScatterElements"]
    assert len(scatters) == len(POOLS)
    for node in scatters:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.input[1]))
    session = ort_session(model)
    x = tied_inputs(3, 5)
    with torch.no_grad():
        pytorch_indices = [t.numpy() for t in PoolUnpoolNet()(x)[1::3]]
    targets = session.run([n.input[1] for n in scatters], {"x": x.numpy()})
    duplicates_seen = 0
    for (kernel, stride, padding, dilation, ceil), original, target in zip(POOLS, pytorch_indices, targets):
        plane = HEIGHT * WIDTH
        for flat_original, flat_target in zip(original.reshape(-1, original[0, 0].size), target.reshape(-1, target.shape[-1])):
            duplicates_seen += flat_original.size - np.unique(flat_original).size
            real = flat_target[flat_target < plane]
            assert real.size == np.unique(real).size, (kernel, stride)
            # the surviving write for every target is the last one in row-major order
            for index in np.unique(flat_original):
                last = np.nonzero(flat_original == index)[0][-1]
                assert flat_target[last] == index
            assert set(np.unique(flat_target)) <= set(np.unique(flat_original)) | {plane}
    assert duplicates_seen > 100  # the inputs do exercise the duplicate handling


def test_geometry_matches_pytorch_shapes():
    for kernel, stride, padding, dilation, ceil in POOLS:
        for size in (7, 8, 13, 16):
            if (kernel - 1) * dilation + 1 > size + 2 * padding:
                continue
            out = F.max_pool2d(torch.zeros(1, 1, size, size), kernel, stride, padding, dilation, ceil_mode=ceil)
            assert pool_output_length(size, kernel, stride, padding, dilation, ceil) == out.shape[-1]


def test_overlap_radius_and_neighbours():
    assert PoolGeometry.create((16, 16), 3, 2, 1).overlap_radius == (1, 1)
    assert PoolGeometry.create((16, 16), 2, 2, 0).overlap_radius == (0, 0)
    assert PoolGeometry.create((16, 16), 3, 1, 1).overlap_radius == (2, 2)
    assert later_neighbour_offsets((1, 1)) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert later_neighbour_offsets((0, 0)) == []
