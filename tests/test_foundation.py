"""The shared foundation: registry, settings, input checks, fusion formulas, checkpoint loading."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mattrt.errors import CheckpointError, InputError, MissingDependencyError, UnknownModelError
from mattrt.models import MattingModel, ModelSettings, check_image, registry
from mattrt.models.checkpoints import CheckpointLayout, load_checkpoint, prefix_renamer, read_state_dict, to_layout
from mattrt.models.fusion import FUSIONS, get_fusion, unified_map


# -- a toy model used to exercise the generic machinery ------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToySettings(ModelSettings):
    name: str = "toy"
    stride_multiple: int = 4
    hidden: int = 4


class ToyModel(MattingModel):
    checkpoint_layouts = (
        CheckpointLayout("authors", "nowhere", prefix_renamer([("encoder.", ["backbone.", "copy.backbone."])])),
    )

    def __init__(self, settings: ToySettings):
        super().__init__(settings)
        self.encoder = nn.Sequential(nn.Conv2d(3, settings.hidden, 3, padding=1), nn.BatchNorm2d(settings.hidden))
        self.head = nn.Conv2d(settings.hidden, 1, 1)

    def checkpoint_parts(self):
        return {"encoder": (self.encoder, ()), "head": (self.head, ())}

    def forward(self, image):
        self.check_image(image)
        return {"detail": torch.sigmoid(self.head(self.encoder(image)))}


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    registry.register_model(ToySettings())(ToyModel)
    registry.register_model(ToySettings(name="toy_tiny", hidden=2, variant_of="toy"))(ToyModel)
    return registry


def test_registry_lists_full_models_before_variants(toy_registry):
    assert toy_registry.list_models() == ["toy", "toy_tiny"]
    assert toy_registry.list_models(include_variants=False) == ["toy"]


def test_unknown_model_lists_the_known_ones(toy_registry):
    with pytest.raises(UnknownModelError, match=r"unknown model 'toi'.*toy, toy_tiny"):
        toy_registry.create_model("toi")


def test_overrides_replace_settings_and_reject_unknown_fields(toy_registry):
    model = toy_registry.create_model("toy", hidden=6)
    assert model.settings.hidden == 6 and not model.training
    with pytest.raises(InputError, match="cannot override colour.*settable fields"):
        toy_registry.create_model("toy", colour=1)
    with pytest.raises(InputError, match="cannot override name"):
        toy_registry.get_settings("toy", name="other")


def test_register_twice_is_an_error(toy_registry):
    with pytest.raises(ValueError, match="registered twice"):
        toy_registry.register_model(ToySettings())(ToyModel)


def test_settings_are_frozen_and_serialise():
    settings = ToySettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.width = 2.0  # type: ignore[misc]
    data = settings.to_dict()
    assert data["mean"] == list(settings.mean) and data["stages"] == ["semantic", "detail"]


# -- input checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((1, 3, 8, 8), np.float32), "expected a torch.Tensor"),
        (torch.zeros(3, 8, 8), "expected 4 dimensions"),
        (torch.zeros(1, 4, 8, 8), "expected 3 channels"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "expected a float tensor"),
        (torch.zeros(1, 3, 8, 10), "multiples of 4, got 8 x 10"),
        (torch.zeros(1, 3, 0, 8), "multiples of 4"),
    ],
)
def test_check_image_names_what_was_expected(image, message):
    with pytest.raises(InputError, match=message):
        check_image(image, 4)


def test_model_forward_checks_its_input(toy_registry):
    model = toy_registry.create_model("toy")
    with pytest.raises(InputError, match="toy input"):
        model(torch.zeros(1, 3, 6, 8))


# -- fusion formulas against hand-computed values ----------------------------------------------------
def _tensors(probs, detail):
    t = torch.tensor(np.asarray(probs, np.float32).T[None, :, None, :])  # 1 x 3 x 1 x P
    d = torch.tensor(np.asarray(detail, np.float32)[None, None, None, :])  # 1 x 1 x 1 x P
    return t, d


def test_unknown_blend_by_hand():
    # (bg, unknown, fg) per pixel; alpha = F + U * detail
    trimap, detail = _tensors([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]], [0.5, 0.25, 0.9])
    alpha = FUSIONS["unknown_blend"](trimap, detail).flatten().numpy()
    np.testing.assert_allclose(alpha, [0.1 + 0.2 * 0.5, 0.3 + 0.6 * 0.25, 1.0], rtol=1e-6)


def test_aim_soft_by_hand():
    # U = (0.5 * unknown + fg) / sum; alpha = (1 - 2|U - .5|) M + 2|U - .5| U
    trimap, detail = _tensors([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.2, 0.6]], [0.3, 0.3, 0.3, 0.8])
    alpha = FUSIONS["aim_soft"](trimap, detail).flatten().numpy()
    u = (0.5 * 0.2 + 0.6) / 1.0  # 0.7 -> confidence 0.4
    np.testing.assert_allclose(alpha, [0.0, 0.3, 1.0, 0.6 * 0.8 + 0.4 * u], rtol=1e-6)
    np.testing.assert_allclose(unified_map(trimap).flatten().numpy(), [0.0, 0.5, 1.0, u], rtol=1e-6)


def test_argmax_trimap_by_hand_including_ties():
    # argmax picks the first maximum: (0.4, 0.4, 0.2) -> background, (0.2, 0.4, 0.4) -> unknown
    probs = [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.1, 0.5, 0.4]]
    trimap, detail = _tensors(probs, [0.3, 1.4, 0.2, 0.9, -0.2, 0.45])
    alpha = FUSIONS["argmax_trimap"](trimap, detail).flatten().numpy()
    np.testing.assert_allclose(alpha, [0.0, 1.0, 1.0, 0.0, 0.0, 0.45])
    hard = torch.argmax(trimap, dim=1, keepdim=True)
    expected = torch.where(hard == 2, 1.0, torch.where(hard == 1, detail.clamp(0, 1), 0.0))
    torch.testing.assert_close(FUSIONS["argmax_trimap"](trimap, detail), expected)


def test_fusion_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="N x 3 x H x W"):
        FUSIONS["unknown_blend"](torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(InputError, match="matching the trimap"):
        FUSIONS["aim_soft"](torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(InputError, match="unknown fusion kind 'max'"):
        get_fusion("max")


# -- checkpoints ------------------------------------------------------------------------------------
def test_authors_layout_with_duplicate_copies_round_trips(toy_registry, tmp_path):
    source = toy_registry.create_model("toy")
    theirs = to_layout(source, ToyModel.checkpoint_layouts[0])
    assert "backbone.0.weight" in theirs and "copy.backbone.0.weight" in theirs and "head.weight" in theirs
    path = tmp_path / "authors.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in theirs.items()}}, path)
    loaded = toy_registry.create_model("toy", checkpoint=path)
    image = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded(image)["detail"], source(image)["detail"], rtol=0, atol=0)
    assert isinstance(loaded.checkpoint_sha256, str) and len(loaded.checkpoint_sha256) == 64


def test_disagreeing_copies_missing_and_unexpected_keys_are_errors(toy_registry, tmp_path):
    model = toy_registry.create_model("toy")
    theirs = to_layout(model, ToyModel.checkpoint_layouts[0])
    bad = dict(theirs)
    bad["copy.backbone.0.weight"] = bad["copy.backbone.0.weight"] + 1
    with pytest.raises(CheckpointError, match="differs from its copy"):
        load_checkpoint(model, bad)
    bad = {k: v for k, v in theirs.items() if k != "head.bias"}
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): head.bias.*unexpected keys \(1\): extra.weight"):
        load_checkpoint(model, bad)
    bad = dict(theirs, **{"head.weight": torch.zeros(2, 4, 1, 1)})
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(2, 4, 1, 1\) vs model \(1, 4, 1, 1\)"):
        load_checkpoint(model, bad)
    # a checkpoint of the other width does not load partially
    other = toy_registry.create_model("toy_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit model 'toy'"):
        load_checkpoint(model, other.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_missing_batchnorm_counters_are_reported_not_fatal(toy_registry):
    model = toy_registry.create_model("toy")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_checkpoint(model, state)
    assert report.tolerated_missing == ["encoder.1.num_batches_tracked"]
    assert any("num_batches_tracked" in str(w.message) for w in caught)


def test_parts_load_from_separate_files(toy_registry, tmp_path):
    source = toy_registry.create_model("toy")
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pt")
    torch.save({"model": source.head.state_dict()}, tmp_path / "head.pt")
    model = toy_registry.create_model("toy", checkpoint={"encoder": tmp_path / "enc.pt", "head": tmp_path / "head.pt"})
    assert set(model.checkpoint_sha256) == {"encoder", "head"}
    image = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(image)["detail"], source(image)["detail"], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="has no checkpoint part tail; its parts are: encoder, head"):
        model.load_weights({"tail": tmp_path / "enc.pt"})


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_state_dict(tmp_path / "nostate.pth")


# -- availability probes ----------------------------------------------------------------------------
def test_require_names_what_is_missing(monkeypatch):
    from mattrt import availability

    monkeypatch.setitem(availability._PROBES, "fake_backend", lambda: availability.Probe("fake_backend", False, None, "install it"))
    availability.probe.cache_clear()
    try:
        assert availability.skip_reason("fake_backend") == "needs fake_backend: install it"
        with pytest.raises(MissingDependencyError, match="TensorRT engine build needs fake_backend.*install it"):
            availability.require("fake_backend", "TensorRT engine build")
    finally:
        availability.probe.cache_clear()


def test_probes_report_this_machine():
    from mattrt import availability

    assert availability.available("python") and availability.available("torch")
    for name in availability.probe_names():
        result = availability.probe(name)
        assert result.found or result.detail, f"{name}: a missing component must say why"
