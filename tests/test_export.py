"""Export machinery on a small MattingModel registered only inside this module: manifest,
parity, lint, CLI, and the safety rules (nothing written on failure, clear errors)."""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mattrt.cli import main
from mattrt.engines.tensorrt.lint import lint_directory
from mattrt.errors import CheckpointError, InputError, MattrtError
from mattrt.export.exporter import export_model
from mattrt.export.parity import ParityError, ort_session
from mattrt.manifest import MANIFEST_FILE, MANIFEST_KEY, Manifest
from mattrt.models import MattingModel, ModelSettings, Stage, TensorSpec, register_model, registry
from mattrt.models.checkpoints import parse_checkpoint

PROBE = "export_probe"


@dataclass(frozen=True)
class ProbeSettings(ModelSettings):
    name: str = PROBE
    description: str = "tiny model exercising the export machinery"
    stride_multiple: int = 8
    semantic_size: int = 48
    tile_size: int = 32
    tile_overlap: int = 8


class Pyramid(nn.Module):
    """PSP-style adaptive average pools at fixed bins, 1x1 conv, bilinear back, concatenated."""

    def __init__(self, channels: int, bins):
        super().__init__()
        self.bins = bins
        self.convs = nn.ModuleList(nn.Conv2d(channels, 2, 1) for _ in bins)

    def forward(self, x):
        size = x.shape[-2:]
        branches = [
            F.interpolate(conv(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, conv in zip(self.bins, self.convs)
        ]
        return torch.cat([x, *branches], 1)


class ProbeSemantic(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pyramid = Pyramid(6, (1, 2, 3, 6))
        self.head = nn.Conv2d(6 + 8, 3, 3, padding=1)

    def forward(self, image):
        logits = self.head(self.pyramid(self.stem(image)))
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits, torch.softmax(logits, 1)


class ProbeDetail(nn.Module):
    """AIM-like overlapping 3x3/s2 pools and SHM-like 2x2/s2 pools with indices, unpooled in reverse."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pyramid = Pyramid(8, (1, 3, 5))
        self.mid = nn.Conv2d(8 + 6, 8, 1)
        self.dec = nn.Conv2d(8, 1, 3, padding=1)
        self.drift = 0.0  # set by a test: a difference that appears only in the exported graph

    def forward(self, image, guidance):
        x = self.enc1(torch.cat([image, guidance], 1))
        x, index1 = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        x = self.enc2(x)
        x, index2 = F.max_pool2d(x, 2, 2, return_indices=True)
        x = torch.relu(self.mid(self.pyramid(x)))
        x = F.max_unpool2d(x, index2, 2, 2)
        x = F.max_unpool2d(x, index1, 2, 2)
        alpha = torch.sigmoid(self.dec(x))
        if self.drift and torch.compiler.is_exporting():
            alpha = alpha + self.drift
        return (alpha,)


class ProbeModel(MattingModel):
    def __init__(self, settings):
        super().__init__(settings)
        self.semantic = ProbeSemantic()
        self.detail = ProbeDetail()

    def stages(self):
        s = self.settings
        return {
            "semantic": Stage(
                "semantic", self.semantic, (TensorSpec("image", 3),),
                (TensorSpec("semantic", 3), TensorSpec("trimap", 3)), s.semantic_size,
            ),
            "detail": Stage(
                "detail", self.detail, (TensorSpec("image", 3), TensorSpec("guidance", 3)),
                (TensorSpec("detail", 1),), s.tile_size,
            ),
        }

    def forward(self, image):
        semantic, trimap = self.semantic(image)
        (detail,) = self.detail(image, trimap)
        from mattrt.models.fusion import FUSIONS

        return {"semantic": semantic, "trimap": trimap, "detail": detail, "alpha": FUSIONS[self.settings.fusion](trimap, detail)}


def build_probe(settings):
    torch.manual_seed(0)
    return ProbeModel(settings)


@pytest.fixture(scope="module")
def probe_registered():
    register_model(ProbeSettings())(build_probe)
    yield PROBE
    registry._REGISTRY.pop(PROBE, None)  # keep the registry of other test modules as it was


@pytest.fixture(scope="module")
def probe_export(probe_registered, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "export"
    manifest = export_model(PROBE, out, max_batch=4, log=None)
    return out, manifest


def leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# -- the export and its manifest ------------------------------------------------------------
def test_manifest_describes_the_export(probe_export):
    out, manifest = probe_export
    assert manifest.model == PROBE
    assert manifest.settings == ProbeSettings().to_dict()
    assert [s.name for s in manifest.stages] == ["semantic", "detail"]
    semantic, detail = manifest.stages
    assert semantic.input_names == ["image"] and semantic.output_names == ["semantic", "trimap"]
    assert detail.input_names == ["image", "guidance"] and detail.output_names == ["detail"]
    assert semantic.inputs[0].shape == ["batch", 3, 48, 48] and semantic.inputs[0].dtype == "float32"
    assert detail.inputs[1].shape == ["batch", 3, 32, 32] and detail.outputs[0].shape == ["batch", 1, 32, 32]
    assert detail.files == {"fp32": "detail.onnx"}
    fusion = manifest.fusion_graph
    assert fusion.input_names == ["trimap", "detail"] and fusion.output_names == ["alpha"]
    assert fusion.inputs[0].shape == ["batch", 3, 32, 32]
    assert manifest.fusion == "unknown_blend"
    assert manifest.guidance == {"kind": "trimap", "channels": 3}
    assert manifest.normalization["mean"] == list(ProbeSettings().mean)
    assert (manifest.stride_multiple, manifest.semantic_size, manifest.tile_size) == (8, 48, 32)
    assert manifest.max_batch == 4 and manifest.opset == 18
    assert manifest.checkpoint_sha256 == "untrained"
    assert {"mattrt", "torch", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.lint["passed"] is True
    for entry in manifest.graphs():
        assert entry.parity["passed"] and entry.parity["worst_rel_l2"] <= 1e-4
        feeds = {(c["feed"], c["batch"]) for c in entry.parity["checks"]}
        assert {("random", 1), ("random", 3)} <= feeds
    assert {(c["feed"], c["batch"]) for c in detail.parity["checks"]} >= {("image", 1), ("image", 3)}
    assert detail.parity["feeds"]["image"]["guidance"] == "semantic stage on the image"


def test_manifest_round_trips_and_is_embedded_in_every_graph(probe_export):
    out, manifest = probe_export
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_FILE, "semantic.onnx", "detail.onnx", "fusion.onnx"])
    assert Manifest.load(out) == manifest
    assert Manifest.from_json(manifest.to_json()) == manifest
    for entry in manifest.graphs():
        path = out / entry.files["fp32"]
        model = onnx.load(str(path))
        assert any(p.key == MANIFEST_KEY for p in model.metadata_props)
        assert Manifest.from_onnx(path) == manifest
        assert len(model.graph.node) == entry.nodes


def test_saved_graphs_match_pytorch_at_every_batch(probe_export):
    out, manifest = probe_export
    model = build_probe(ProbeSettings()).eval()
    stages = model.stages()
    for entry in manifest.stages:
        session = ort_session(onnx.load(str(out / entry.files["fp32"])))
        for batch in (1, 2, 4):
            inputs = stages[entry.name].example_inputs(batch, torch.Generator().manual_seed(batch))
            with torch.no_grad():
                expected = stages[entry.name].module(*inputs)
            got = session.run(None, {n: t.numpy() for n, t in zip(entry.input_names, inputs)})
            for want, have in zip(expected, got):
                np.testing.assert_allclose(have, want.numpy(), rtol=1e-4, atol=1e-5)


def test_lint_command_accepts_the_export(probe_export, capsys):
    out, _ = probe_export
    assert lint_directory(out).passed
    assert main(["lint", str(out)]) == 0
    assert "passed" in capsys.readouterr().out


# -- safety ----------------------------------------------------------------------------------
def test_existing_directory_needs_force_and_force_replaces_it(probe_registered, probe_export, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("not an export")
    with pytest.raises(InputError, match="already exists"):
        export_model(PROBE, out, log=None)
    with pytest.raises(InputError, match="not a mattrt export"):  # --force never deletes a foreign directory
        export_model(PROBE, out, force=True, log=None)
    (out / "stale.txt").unlink()
    (out / MANIFEST_FILE).write_text("{}")  # a manifest.json, but not an export's
    with pytest.raises(InputError, match="not a mattrt export manifest"):
        export_model(PROBE, out, force=True, log=None)
    shutil.rmtree(out)
    shutil.copytree(probe_export[0], out)  # an earlier export
    checkpoint = tmp_path / "probe.pth"
    torch.save(build_probe(ProbeSettings()).state_dict(), checkpoint)
    previous_umask = os.umask(0o022)
    try:
        code = main(["export", PROBE, "--out", str(out), "--force", "--tile", "40", "--max-batch", "2",
                     "--checkpoint", str(checkpoint)])
    finally:
        os.umask(previous_umask)
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o755  # the umask's mode, not mkdtemp's 0700
    manifest = Manifest.load(out)
    assert manifest.tile_size == 40 and manifest.stage("detail").spatial_size == 40
    assert manifest.fusion_graph.inputs[1].shape == ["batch", 1, 40, 40]
    assert manifest.checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert leftovers(tmp_path, "export") == []
    printed = capsys.readouterr().out
    assert "rel L2" in printed and "lint passed" in printed


def test_parity_failure_leaves_nothing(tmp_path):
    model = build_probe(ProbeSettings()).eval()
    model.detail.drift = 1e-2
    out = tmp_path / "export"
    with pytest.raises(ParityError, match="detail"):
        export_model(model, out, max_batch=2, log=None)
    assert not out.exists()
    assert leftovers(tmp_path, "export") == []


def test_sizes_must_respect_the_stride_multiple(probe_registered, tmp_path, capsys):
    out = tmp_path / "export"
    with pytest.raises(InputError, match="tile size 36 .* multiple of .* 8"):
        export_model(PROBE, out, tile_size=36, log=None)
    with pytest.raises(InputError, match="semantic size 50"):
        export_model(PROBE, out, semantic_size=50, log=None)
    assert main(["export", PROBE, "--out", str(out), "--tile", "12"]) == 1
    assert "use 8 or 16" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_of_another_model_is_refused(probe_registered, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3)).state_dict(), other)
    out = tmp_path / "export"
    with pytest.raises(CheckpointError):
        export_model(PROBE, out, checkpoint=other, log=None)
    with pytest.raises(CheckpointError, match="no checkpoint part"):
        export_model(PROBE, out, checkpoint={"trimap": other}, log=None)
    assert not out.exists() and leftovers(tmp_path, "export") == []


def test_unwritable_destination_is_reported(probe_registered, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create|not writable"):
        export_model(PROBE, blocker / "export", log=None)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                export_model(PROBE, locked / "export", log=None)
        finally:
            locked.chmod(0o700)


def test_bad_options_are_clear_errors(probe_registered, tmp_path):
    with pytest.raises(InputError, match="max batch"):
        export_model(PROBE, tmp_path / "a", max_batch=0, log=None)
    with pytest.raises(InputError, match="opset 21 is outside"):
        export_model(PROBE, tmp_path / "a", opset=21, log=None)
    with pytest.raises(MattrtError, match="unknown model"):
        export_model("no_such_model", tmp_path / "a", log=None)


def test_checkpoint_option_parsing(tmp_path):
    assert parse_checkpoint(None) is None
    assert parse_checkpoint(["w.pth"]) == "w.pth"
    assert parse_checkpoint(["trimap=t.pth", "matting=m.pth"]) == {"trimap": "t.pth", "matting": "m.pth"}
    odd = tmp_path / "a=b.pth"
    odd.write_text("")
    assert parse_checkpoint([str(odd)]) == str(odd)  # an existing file whose name has "="
    with pytest.raises(InputError, match="PART=PATH"):
        parse_checkpoint(["t.pth", "m.pth"])
    with pytest.raises(InputError, match="twice"):
        parse_checkpoint(["a=x", "a=y"])


def test_manifest_rejects_foreign_json(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text('{"format_version": 99}')
    with pytest.raises(InputError, match="format_version"):
        Manifest.load(tmp_path)
    with pytest.raises(InputError, match="no export manifest"):
        Manifest.load(tmp_path / "missing")


def test_instance_is_rebuilt_at_requested_sizes_with_its_weights(probe_registered):
    from mattrt.export.exporter import load_model

    model = build_probe(ProbeSettings())
    with torch.no_grad():
        model.detail.dec.bias.fill_(0.25)
    model.checkpoint_sha256 = "abc"
    resized = load_model(model, tile_size=40)
    assert resized.settings.tile_size == 40 and resized.stages()["detail"].spatial_size == 40
    assert resized.settings.semantic_size == model.settings.semantic_size
    assert torch.equal(resized.detail.dec.bias, model.detail.dec.bias)
    assert resized.checkpoint_sha256 == "abc"
    assert load_model(model) is model


class Triple(nn.Module):
    def forward(self, x):
        return (x * 3.0,)


def test_parity_falls_back_to_float64_only_for_rounding_sensitive_outputs():
    from mattrt.export.parity import judge

    x = torch.linspace(-1.0, 1.0, 1000, dtype=torch.float32).reshape(1, 1, 10, 100)
    feed_sets = {("random", 1): (x,)}
    exact = (x.double() * 3.0).numpy()
    scale = np.linalg.norm(exact) / np.sqrt(exact.size)
    rng = np.random.default_rng(0)

    def off_by(rel):  # exact + noise of the given relative L2
        return [exact + rng.standard_normal(exact.shape) * rel * scale]

    pytorch_fp32 = {("random", 1): off_by(2e-4)}  # a network PyTorch FP32 itself cannot pin down
    close = {("random", 1): off_by(3e-4)}
    summary, results = judge(Triple(), pytorch_fp32, close, feed_sets, ["y"], 1e-4)
    assert results[0].rel_l2 > 1e-4  # the plain FP32 rule fails ...
    assert summary["passed"] and summary["fp64_checks"][0]["allowed"] == pytest.approx(4e-4, rel=0.05)
    far = {("random", 1): off_by(1e-3)}
    summary, _ = judge(Triple(), pytorch_fp32, far, feed_sets, ["y"], 1e-4)
    assert not summary["passed"]  # ... and a graph worse than PyTorch's own rounding still fails
    accurate = {("random", 1): off_by(1e-6)}
    worse = {("random", 1): off_by(5e-4)}
    summary, _ = judge(Triple(), accurate, worse, feed_sets, ["y"], 1e-4)
    assert not summary["passed"]  # PyTorch FP32 is accurate here: no allowance beyond the tolerance
