"""Export + parity + lint of every registered reduced ("_tiny") seed model, each exported once."""

import onnx
import pytest

from mattrt.engines.tensorrt.lint import lint_directory
from mattrt.export.exporter import export_model
from mattrt.manifest import Manifest
from mattrt.models import get_settings, list_models

TINY_MODELS = [name for name in list_models() if name.endswith("_tiny")]


@pytest.fixture(scope="module", params=TINY_MODELS)
def exported(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "export"
    manifest = export_model(name, out, max_batch=4, log=None)
    return name, out, manifest


def test_every_stage_is_exported_with_parity(exported):
    name, out, manifest = exported
    settings = get_settings(name)
    assert [s.name for s in manifest.stages] == list(settings.stages)
    assert manifest.fusion == settings.fusion and manifest.fusion_graph is not None
    for entry in manifest.graphs():
        parity = entry.parity
        assert parity["passed"] and parity["worst_rel_l2"] <= 1e-4, (entry.name, parity["worst_rel_l2"])
        checked = {(c["feed"], c["batch"]) for c in parity["checks"]}
        assert {("random", 1), ("random", 3)} <= checked
        if entry.name != "fusion":
            assert {("image", 1), ("image", 3)} <= checked
        print(f"{name}/{entry.name}: {entry.nodes} nodes, worst rel L2 {parity['worst_rel_l2']:.2e}, "
              f"max abs {parity['worst_max_abs']:.2e}, {entry.export_seconds:.1f} s")


def test_graphs_have_a_dynamic_batch_and_fixed_spatial_shape(exported):
    _, out, manifest = exported
    for entry in manifest.graphs():
        model = onnx.load(str(out / entry.files["fp32"]))
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch"
            assert all(d.dim_value > 0 for d in dims[1:])
        for value in model.graph.input:
            dims = value.type.tensor_type.shape.dim
            assert dims[2].dim_value == dims[3].dim_value == entry.spatial_size


def test_lint_passes_and_manifest_round_trips(exported):
    _, out, manifest = exported
    assert manifest.lint["passed"], manifest.lint["problems"]
    assert lint_directory(out).passed
    assert Manifest.load(out) == manifest
    ops = {n.op_type for e in manifest.graphs() for n in onnx.load(str(out / e.files["fp32"])).graph.node}
    assert "MaxUnpool" not in ops
