"""The contract every registered model fulfils (models/base.py), checked once over the registry.

Parametrized over the registered tiny variants (`list_models(include_variants=True)`, reduced
variants whose stages run at most 128 px), so a new model is checked by registering a tiny
variant, without new test code. Model-specific facts (parameter counts, the authors' checkpoint
layouts, what each stage's values mean) stay in tests/test_model_<family>.py.
"""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batchnorm

from mattrt.errors import InputError
from mattrt.fusion_kinds import fusion_kind
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.fusion import FUSIONS
from mattrt.models.settings import TRIMAP_CLASSES

TINY_SIZE = 128


def _tiny_variants() -> list[str]:
    names = []
    for name in list_models(include_variants=True):
        settings = get_settings(name)
        if settings.variant_of is not None and max(settings.semantic_size or 0, settings.tile_size) <= TINY_SIZE:
            names.append(name)
    return names


TINY_VARIANTS = _tiny_variants()


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


@pytest.fixture(params=TINY_VARIANTS)
def name(request) -> str:
    return request.param


@pytest.fixture
def model(models, name):
    """The tiny variant with seeded random weights and non-trivial BatchNorm statistics (so a
    tensor a checkpoint round trip missed would show), built once per module."""
    if name not in models:
        torch.manual_seed(0)
        models[name] = create_model(name)
        randomise_batchnorm(models[name], seed=1)
    return models[name]


def _image(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """An image forward() accepts that is neither square nor a stage size."""
    side = model.whole_image_multiple * max(1, 32 // model.whole_image_multiple)
    return torch.randn(batch, 3, 2 * side, 3 * side, generator=torch.Generator().manual_seed(seed))


def test_every_published_model_has_a_tiny_variant():
    published = list_models(include_variants=False)
    assert sorted({get_settings(n).variant_of for n in TINY_VARIANTS}) == sorted(published)


def test_settings_follow_the_contract(name):
    settings = get_settings(name)
    assert settings.stages[0] == "semantic" and settings.stages[-1] == "detail"
    fusion_kind(settings.fusion)
    multiple = settings.stride_multiple
    assert settings.tile_size % multiple == 0
    assert settings.semantic_size is None or settings.semantic_size % multiple == 0
    assert (settings.guidance == "none") == (settings.guidance_channels == 0)


def test_stages_follow_the_contract(model):
    settings = model.settings
    stages = model.stages()
    assert list(stages) == list(settings.stages)
    generator = torch.Generator().manual_seed(2)
    results = {}
    for stage_name, stage in stages.items():
        with torch.no_grad():
            outputs = stage.module(*stage.example_inputs(2, generator))
        assert len(outputs) == len(stage.output_names), stage_name
        size = stage.spatial_size
        for output_name, value in zip(stage.output_names, outputs):
            assert value.shape[0] == 2 and value.shape[-2:] == (size, size), (stage_name, output_name)
            assert torch.isfinite(value).all(), (stage_name, output_name)
        results[stage_name] = outputs
    semantic, detail = stages["semantic"], stages["detail"]
    assert semantic.input_names == ["image"] and semantic.output_names == ["semantic", "trimap"]
    assert semantic.spatial_size == model.settings.semantic_size
    assert detail.output_names == ["detail"] and detail.spatial_size == settings.tile_size
    assert detail.input_names == (["image"] if settings.guidance == "none" else ["image", "guidance"])
    assert [spec.channels for spec in detail.inputs[1:]] == ([settings.guidance_channels] if settings.guidance_channels else [])
    (_, trimap), (raw,) = results["semantic"], results["detail"]
    size = semantic.spatial_size
    assert trimap.shape == (2, len(TRIMAP_CLASSES), size, size)
    assert trimap.min() >= 0 and trimap.max() <= 1
    torch.testing.assert_close(trimap.sum(dim=1), torch.ones(2, size, size), rtol=0, atol=1e-5)
    assert raw.shape == (2, 1, settings.tile_size, settings.tile_size)


def test_forward_equals_the_stages_run_by_hand(model):
    image = _image(model)
    stages = model.stages()
    with torch.no_grad():
        out = model(image)
        semantic, trimap = stages["semantic"].module(image)
        guidance = model.guidance(image, trimap)
        (detail,) = stages["detail"].module(image) if guidance is None else stages["detail"].module(image, guidance)
        alpha = FUSIONS[model.settings.fusion](trimap, detail)
    assert {"semantic", "trimap", "detail", "alpha"} <= set(out)
    for key, value in (("semantic", semantic), ("trimap", trimap), ("detail", detail), ("alpha", alpha)):
        assert out[key].shape[0] == 2 and out[key].shape[-2:] == image.shape[-2:], key
        torch.testing.assert_close(out[key], value, rtol=0, atol=0, msg=f"{key} differs")


def test_native_checkpoint_round_trip(model, name, tmp_path):
    """A state_dict saved as one file loads into a fresh model: every tensor and every output."""
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    loaded = create_model(name, checkpoint=path)
    assert isinstance(loaded.checkpoint_sha256, str)
    expected_state, got_state = model.state_dict(), loaded.state_dict()
    assert list(got_state) == list(expected_state)
    for key, value in expected_state.items():
        assert torch.equal(got_state[key], value), key
    image = _image(model, batch=1, seed=3)
    with torch.no_grad():
        expected, got = model(image), loaded(image)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_bad_input_is_a_clear_error(model):
    multiple = model.whole_image_multiple
    side = 2 * multiple
    cases = [
        (torch.zeros(1, 4, side, side), "expected 3 channels"),
        (torch.zeros(1, 3, side, side, dtype=torch.uint8), "expected a float tensor"),
        (torch.zeros(1, 3, side, side + multiple // 2), f"multiples of {multiple}, got {side} x {side + multiple // 2}"),
        (torch.zeros(3, side, side), "expected 4 dimensions"),
    ]
    for image, message in cases:
        with pytest.raises(InputError, match=message):
            model(image)
