"""Semantic Image Matting (`semantic`, `semantic_tiny`): stages, guidance (trimap channels,
click maps, window score maps), fusion, input checks, parameter counts and checkpoint parts
in the layouts of nowsyn/SIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomise_batchnorm
from torch import nn

from mattrt.errors import CheckpointError, InputError
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.checkpoints import to_layout
from mattrt.models.fusion import FUSIONS
from mattrt.models.sim import (
    CLASSIFIER_LAYOUT,
    MATTING_LAYOUT,
    Renormalised,
    SimClassifier,
    SimMattingNetwork,
    SimModel,
    SimSettings,
)
from mattrt.models.sim_guidance import click_maps, guidance_from_stages, sim_guidance, window_offsets

TINY = "semantic_tiny"
LEVELS = torch.tensor([0.0, 128.0, 255.0]) / 255.0


def tiny_model(seed: int, **overrides) -> SimModel:
    torch.manual_seed(seed)
    model = create_model(TINY, **overrides)
    randomise_batchnorm(model, seed)
    if model.settings.trimap_model == "salient_tiny":
        # An untrained STN gives nearly uniform class probabilities (argmax: foreground almost
        # everywhere); sharpening its fused 1x1 output conv (U2Net's `outconv`) makes all three
        # classes occur, so the unknown band, the classifier windows and the fusion are exercised.
        with torch.no_grad():
            model.trimap.outconv.weight.mul_(300.0)
            model.trimap.outconv.bias.zero_()
    return model


def image(batch: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def one_hot(hard: torch.Tensor) -> torch.Tensor:
    """H x W class indices -> 1 x 3 x H x W probabilities."""
    return F.one_hot(hard, 3).permute(2, 0, 1)[None].float()


@pytest.fixture(scope="module")
def tiny() -> SimModel:
    return tiny_model(1)


@pytest.fixture(scope="module")
def tiny_out(tiny):
    with torch.no_grad():
        out = tiny(image(2, 64, seed=3), with_foreground=True)
    hard = out["trimap"].argmax(1)
    assert all(bool((hard[n] == c).any()) for n in range(2) for c in range(3)), "test input lacks a trimap class"
    return out


# -- registry and settings -------------------------------------------------------------------
def test_registered_with_tiny_variant():
    assert {"semantic", TINY} <= set(list_models())
    assert TINY not in list_models(include_variants=False)
    full, small = get_settings("semantic"), get_settings(TINY)
    assert small.variant_of == "semantic" and small.width < 1.0
    assert full.stages == ("semantic", "classifier_320", "classifier_800", "detail")
    assert small.stages == ("semantic", "classifier_32", "classifier_64", "detail")
    assert full.trimap_model == "salient" and small.trimap_model == "salient_tiny"
    assert (full.fusion, full.guidance, full.guidance_channels) == ("argmax_trimap", "sim", 28)
    assert full.stride_multiple == 8 and full.tile_size % 8 == 0 and small.tile_size % 8 == 0


def test_semantic_size_follows_the_trimap_model(tiny):
    assert get_settings(TINY).semantic_size is None
    assert tiny.settings.semantic_size == get_settings("salient_tiny").semantic_size
    assert tiny.stages()["semantic"].spatial_size == tiny.settings.semantic_size
    assert create_model(TINY, semantic_size=96).stages()["semantic"].spatial_size == 96
    with pytest.raises(InputError, match="multiple of the trimap model"):
        create_model(TINY, semantic_size=72)


def test_stages_follow_classifier_windows():
    model = create_model(TINY, classifier_windows=(48,))
    assert model.settings.stages == ("semantic", "classifier_48", "detail")
    assert model.stages()["classifier_48"].spatial_size == 48
    with pytest.raises(InputError, match="follow classifier_windows"):
        create_model(TINY, stages=("semantic", "detail"))
    with pytest.raises(InputError, match="classifier_windows"):
        create_model(TINY, classifier_windows=(32, 32))


def test_trimap_model_must_have_its_own_semantic_stage():
    with pytest.raises(InputError, match="itself a Semantic Image Matting model"):
        create_model(TINY, trimap_model=TINY)


def test_holds_only_the_trimap_network_of_the_provider(tiny):
    provider = create_model("salient_tiny")
    stn_parameters = sum(p.numel() for p in provider.stn.parameters())
    assert type(tiny.trimap) is type(provider.stn) and not tiny.holds_whole_part
    assert sum(p.numel() for p in tiny.trimap.parameters()) == stn_parameters
    # Nothing of the provider's matting network comes along.
    assert not any(k.startswith("trimap.") and "densepn" in k for k in tiny.state_dict())
    assert tiny.num_parameters() == (
        stn_parameters
        + sum(p.numel() for p in tiny.classifier.parameters())
        + sum(p.numel() for p in tiny.matting.parameters())
    )


def test_provider_shipped_as_one_file_is_held_whole():
    model = create_model(TINY, trimap_model="aim_tiny")
    assert model.trimap_part == "model"
    with torch.no_grad():
        out = model(image(1, 64))
    assert out["trimap"].shape == (1, 3, 64, 64) and torch.isfinite(out["alpha"]).all()


# -- stages ------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_stage_shapes_and_ranges(tiny, batch):
    stages = tiny.stages()
    assert list(stages) == list(tiny.settings.stages)
    g = torch.Generator().manual_seed(batch)
    with torch.no_grad():
        size = stages["semantic"].spatial_size
        semantic, trimap = stages["semantic"].module(*stages["semantic"].example_inputs(batch, g))
        assert semantic.shape == trimap.shape == (batch, 3, size, size)
        assert torch.allclose(trimap.sum(1), torch.ones(batch, size, size), atol=1e-5)
        for window in tiny.settings.classifier_windows:
            stage = stages[f"classifier_{window}"]
            assert stage.spatial_size == window and stage.input_names == ["image", "trimap_level"]
            (cam,) = stage.module(*stage.example_inputs(batch, g))
            assert cam.shape == (batch, 20, window, window) and torch.isfinite(cam).all()
        detail_stage = stages["detail"]
        assert detail_stage.input_names == ["image", "guidance"] and detail_stage.inputs[1].channels == 28
        (detail,) = detail_stage.module(*detail_stage.example_inputs(batch, g))
        size = tiny.settings.tile_size
        assert detail.shape == (batch, 1, size, size) and torch.isfinite(detail).all()


def test_classifier_stages_share_one_module(tiny):
    stages = tiny.stages()
    assert stages["classifier_32"].module is stages["classifier_64"].module is tiny.classifier


def test_forward_outputs(tiny_out):
    out = tiny_out
    assert out["semantic"].shape == out["trimap"].shape == (2, 3, 64, 64)
    assert out["detail"].shape == out["alpha"].shape == (2, 1, 64, 64)
    for key in ("foreground", "background", "attention"):
        assert out[key].shape == (2, 3, 64, 64)
        assert out[key].min() >= 0 and out[key].max() <= 1
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1
    assert torch.isfinite(out["detail"]).all()


def test_forward_equals_stages_run_by_hand(tiny, tiny_out):
    x = image(2, 64, seed=3)
    stages = tiny.stages()
    s = tiny.settings
    with torch.no_grad():
        semantic, trimap = stages["semantic"].module(x)

        def classify(crops, levels):
            return stages[f"classifier_{crops.shape[-1]}"].module(crops, levels)[0]

        guidance = sim_guidance(x, trimap, classify, s.classifier_windows, s.click_scale, s.num_classes, 3)
        (detail,) = stages["detail"].module(x, guidance)
    alpha = FUSIONS[s.fusion](trimap, detail)
    assert guidance[:, 8:].max() > 0  # the classifier windows ran
    assert torch.allclose(semantic, tiny_out["semantic"], atol=1e-6)
    assert torch.allclose(trimap, tiny_out["trimap"], atol=1e-6)
    assert torch.allclose(guidance, tiny.guidance(x, trimap), atol=1e-6)
    scale = tiny_out["detail"].abs().max()
    assert torch.allclose(detail, tiny_out["detail"], atol=1e-5 * scale)
    assert torch.allclose(alpha, tiny_out["alpha"], atol=1e-5)


def test_fusion_forces_the_hard_trimap(tiny_out):
    hard = tiny_out["trimap"].argmax(1, keepdim=True)
    alpha, detail = tiny_out["alpha"], tiny_out["detail"]
    assert (alpha[hard == 0] == 0).all() and (alpha[hard == 2] == 1).all()
    assert torch.equal(alpha[hard == 1], detail.clamp(0, 1)[hard == 1])


def test_train_mode_reaches_the_borrowed_stage(tiny):
    semantic_module = tiny.stages()["semantic"].module
    tiny.train()
    try:
        assert semantic_module.training and tiny.trimap.training
    finally:
        tiny.eval()
    assert not semantic_module.training and not tiny.trimap.training


# -- guidance ------------------------------------------------------------------------------------
def test_window_offsets():
    # Every half window plus one flush with the end (320 px windows on 800 px: 0,160,320 + 480).
    assert window_offsets(800, 320) == [0, 160, 320, 480]
    assert window_offsets(960, 800) == [0, 160]
    assert window_offsets(320, 320) == [0]
    assert window_offsets(100, 320) == [0]


def test_click_maps_against_brute_force_distances():
    g = torch.Generator().manual_seed(0)
    hard = torch.randint(0, 3, (9, 13), generator=g).numpy()
    hard[hard == 2] = 1
    hard[4, 6] = 2  # one foreground pixel
    clicks = click_maps(hard == 0, hard == 2, scale=100.0)
    rows, cols = np.mgrid[0:9, 0:13]
    for k, cls in enumerate((0, 2)):
        ys, xs = np.nonzero(hard == cls)
        squared = ((rows[..., None] - ys) ** 2 + (cols[..., None] - xs) ** 2).min(-1)
        for j, sigma in enumerate((0.02, 0.08, 0.16)):
            expected = np.exp(-squared / (2 * (sigma * 100.0) ** 2))
            assert np.allclose(clicks[3 * k + j], expected, atol=1e-6)
    none = click_maps(np.ones((4, 5), bool), np.zeros((4, 5), bool))
    assert (none[3:] == 0).all() and (none[:3] == 1).all()


def constant_classifier(calls: list):
    """A stand-in classifier: every window's CAM is 1 + top + 10 * left in channel 0 and its
    negative in channel 1 (top-left recovered from the crop's first pixel)."""

    def classify(crops, levels):
        calls.append((tuple(crops.shape), levels.unique().tolist()))
        k, _, w, _ = crops.shape
        value = crops[:, 0, 0, 0].reshape(k, 1, 1)
        cam = torch.zeros(k, 20, w, w)
        cam[:, 0] = value
        cam[:, 1] = -value
        return cam

    return classify


def coded_image(h: int, w: int) -> torch.Tensor:
    """Pixel (y, x) of channel 0 holds 1 + y + 10 x, so a crop's first pixel names its window."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([1 + ys + 10 * xs, ys, xs]).float()[None]


def test_scores_average_overlapping_windows_and_normalise_globally():
    # 6 x 6, windows of 4: offsets 0 and 2 on both axes; everything unknown, so 4 windows.
    hard = torch.ones(6, 6, dtype=torch.long)
    calls: list = []
    guidance = sim_guidance(coded_image(6, 6), one_hot(hard), constant_classifier(calls), windows=(4,))
    assert [c[0] for c in calls] == [(4, 3, 4, 4)]
    values = {(0, 0): 1.0, (0, 2): 21.0, (2, 0): 3.0, (2, 2): 23.0}
    total, count = torch.zeros(6, 6), torch.zeros(6, 6)
    for (top, left), v in values.items():
        total[top : top + 4, left : left + 4] += v
        count[top : top + 4, left : left + 4] += 1
    averaged = total / count  # channel 0; channel 1 is its negative
    low, high = -averaged.max(), averaged.max()
    assert torch.allclose(guidance[0, 8], (averaged - low) / (high - low), atol=1e-6)
    assert torch.allclose(guidance[0, 9], (-averaged - low) / (high - low), atol=1e-6)
    # Channels without activation sit at the normalised zero.
    assert torch.allclose(guidance[0, 10], torch.full((6, 6), float(-low / (high - low))), atol=1e-6)


def test_scores_skip_windows_without_unknown_and_mask_outside_it():
    # 8 x 8, windows of 4 at 0, 2, 4 per axis; unknown only at (1, 1) and (6, 6).
    hard = torch.zeros(8, 8, dtype=torch.long)
    hard[1, 1] = hard[6, 6] = 1
    hard[7, 0] = 2
    calls: list = []
    guidance = sim_guidance(coded_image(8, 8), one_hot(hard), constant_classifier(calls), windows=(4,))
    # Only the windows at (0, 0) and (4, 4) hold unknown pixels: CAM values 1 and 45.
    assert [c[0] for c in calls] == [(2, 3, 4, 4)]
    assert set(calls[0][1]) <= set(LEVELS.tolist())
    expected = torch.zeros(20, 8, 8)
    for channel, sign in ((0, 1.0), (1, -1.0)):
        expected[channel, 1, 1] = (sign * 1 + 45) / 90
        expected[channel, 6, 6] = (sign * 45 + 45) / 90
    for channel in range(2, 20):
        expected[channel, 1, 1] = expected[channel, 6, 6] = 0.5
    assert torch.allclose(guidance[0, 8:], expected, atol=1e-6)
    # Trimap channels: background, foreground of the hard trimap.
    assert torch.equal(guidance[0, 0], (hard == 0).float()) and torch.equal(guidance[0, 1], (hard == 2).float())
    assert torch.allclose(guidance[0, 2:8], torch.from_numpy(click_maps((hard == 0).numpy(), (hard == 2).numpy())))


def test_window_larger_than_the_image_is_zero_padded():
    hard = torch.ones(16, 24, dtype=torch.long)
    seen = []

    def classify(crops, levels):
        seen.append((crops.clone(), levels.clone()))
        return torch.rand(crops.shape[0], 20, 32, 32)

    image_in = torch.randn(1, 3, 16, 24)
    guidance = sim_guidance(image_in, one_hot(hard), classify, windows=(32,))
    (crops, levels), = seen
    assert crops.shape == (1, 3, 32, 32)
    assert torch.equal(crops[0, :, :16, :24], image_in[0]) and (crops[0, :, 16:] == 0).all()
    assert (crops[0, :, :, 24:] == 0).all() and (levels[0, 0, 16:] == 0).all()
    assert guidance.shape == (1, 28, 16, 24)
    assert guidance[0, 8:].min() >= 0 and guidance[0, 8:].max() <= 1


def test_no_unknown_pixel_gives_zero_scores():
    hard = torch.zeros(8, 8, dtype=torch.long)
    hard[4:] = 2
    calls: list = []
    guidance = sim_guidance(torch.randn(1, 3, 8, 8), one_hot(hard), constant_classifier(calls), windows=(4,))
    assert calls == [] and (guidance[0, 8:] == 0).all()


def test_guidance_accepts_numpy(tiny):
    x = image(1, 64, seed=5)
    with torch.no_grad():
        _, trimap = tiny.semantic(x)
        reference = tiny.guidance(x, trimap)

        def classify(crops, levels):
            assert isinstance(crops, np.ndarray) and isinstance(levels, np.ndarray)
            return tiny.classifier(torch.from_numpy(crops), torch.from_numpy(levels))[0].numpy()

        s = tiny.settings
        got = sim_guidance(x.numpy(), trimap.numpy(), classify, s.classifier_windows, s.click_scale)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert np.allclose(got, reference.numpy(), atol=1e-6)


def test_guidance_from_stages_dispatches_on_window_size(tiny):
    x = image(1, 64, seed=6)
    stages = tiny.stages()
    called = []

    def run_stage(name, *inputs):
        called.append(name)
        return stages[name].module(*inputs)

    with torch.no_grad():
        _, trimap = tiny.semantic(x)
        got = guidance_from_stages(tiny.settings.to_dict(), x, trimap, run_stage)
        assert torch.allclose(got, tiny.guidance(x, trimap), atol=1e-6)
    assert set(called) == {"classifier_32", "classifier_64"}


def test_renormalised_feeds_another_normalisation():
    class Echo(nn.Module):
        def forward(self, x):
            return x, x

    ours = SimSettings()
    theirs = SimSettings(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), channel_order="BGR")
    rgb = torch.rand(1, 3, 4, 4)
    normalised = (rgb - torch.tensor(ours.mean).view(1, 3, 1, 1)) / torch.tensor(ours.std).view(1, 3, 1, 1)
    expected = (rgb.flip(1) - 0.5) / torch.tensor(theirs.std).view(1, 3, 1, 1)
    assert torch.allclose(Renormalised(Echo(), ours, theirs)(normalised)[0], expected, atol=1e-5)


def test_guidance_rejects_bad_inputs():
    classify = constant_classifier([])
    with pytest.raises(InputError, match="trimap must be N x 3 x H x W"):
        sim_guidance(torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 6), classify, windows=(4,))
    with pytest.raises(InputError, match="both be NumPy arrays or both torch"):
        sim_guidance(np.zeros((1, 3, 8, 8), np.float32), torch.rand(1, 3, 8, 8), classify, windows=(4,))
    with pytest.raises(InputError, match="expected 3 channels"):
        sim_guidance(torch.randn(1, 4, 8, 8), torch.rand(1, 3, 8, 8), classify, windows=(4,))
    with pytest.raises(InputError, match="classify_window returned shape"):
        sim_guidance(torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8), lambda c, l: c, windows=(4,))


# -- input checks ----------------------------------------------------------------------------------
def test_bad_input_raises(tiny):
    with pytest.raises(InputError, match="expected 3 channels"):
        tiny(torch.randn(1, 4, 64, 64))
    with pytest.raises(InputError, match="float tensor"):
        tiny(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    # Multiples of 8 suit the matting network, but forward() runs the trimap model (stride 32)
    # on the whole image too.
    assert tiny.whole_image_multiple == 32
    with pytest.raises(InputError, match="multiples of 32"):
        tiny(torch.randn(1, 3, 40, 64))


# -- parameter counts --------------------------------------------------------------------------
def test_full_parameter_counts():
    # Independent count. torchvision's ResNet-50 has 25,557,032 parameters (published figure), of
    # which conv1 (64*3*49 = 9,408), bn1 (128) and fc (2048*1000 + 1000 = 2,049,000): the four
    # stages hold 23,498,496.
    stages = 25_557_032 - 9_408 - 128 - 2_049_000
    # Classifier: 4-channel conv1 (64*4*49) + bn1 + stages + 20-class fc (2048*20 + 20).
    classifier = 64 * 4 * 49 + 128 + stages + 2048 * 20 + 20
    assert classifier == 23_552_148
    # Matting encoder: deep stem 3x3 convs 11->64, 64->64, 64->128 with BN, the 7x7 side conv
    # 20->64, and stages whose first block reads 128 channels instead of 64 (+64*64 in its
    # conv1, +64*256 in its downsample).
    encoder = (11 * 64 + 64 * 64 + 64 * 128) * 9 + 2 * (64 + 64 + 128) + 20 * 64 * 49 + stages + 64 * 64 + 64 * 256
    # Decoder: ASPP (1x1 and three 3x3 atrous 2048->256, pooled 1x1, projection 1280->256, each
    # + BN), up-convs 2304->256->256, 512->256, 384->64 (3x3 with bias, + BN), heads
    # 72->32->16->1 / ->6 and 64->32->16->3 (3x3 with bias, last 1x1 without).
    aspp = 2048 * 256 * (1 + 9 * 3 + 1) + 1280 * 256 + 6 * 512
    up = (2304 * 256 * 9 + 256 + 512) + (256 * 256 * 9 + 256 + 512) + (512 * 256 * 9 + 256 + 512) + (384 * 64 * 9 + 64 + 128)
    heads = 2 * (72 * 32 * 9 + 32 + 32 * 16 * 9 + 16) + 16 * (1 + 6) + (64 * 32 * 9 + 32 + 32 * 16 * 9 + 16 + 16 * 3)
    assert (encoder, aspp + up + heads) == (23_699_136, 22_910_704)

    settings = SimSettings()
    matting = SimMattingNetwork(settings)
    assert sum(p.numel() for p in matting.encoder.parameters()) == encoder
    assert sum(p.numel() for p in matting.decoder.parameters()) == aspp + up + heads
    assert sum(p.numel() for p in SimClassifier(20, 1.0).parameters()) == classifier


def test_full_model_holds_the_three_parts():
    torch.manual_seed(0)
    model = create_model("semantic")
    assert model.settings.semantic_size == get_settings("salient").semantic_size
    stn = sum(p.numel() for p in create_model("salient").stn.parameters())
    assert model.num_parameters() == 46_609_840 + 23_552_148 + stn
    parts = model.checkpoint_parts()
    assert {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in parts.items()} == {
        "matting": 46_609_840,
        "classifier": 23_552_148,
        "trimap": stn,
    }


def test_full_key_sets_match_the_authors():
    # Counts from their code: MattingModule (config/sim.toml) has 65 BatchNorms (stem 3, blocks
    # 48, downsamples 4, ASPP 6, up-convs 4) with 5 entries each, 56 encoder conv weights and
    # 29 decoder conv tensors: 410 keys. The classifier: 53 BatchNorms, 53 convs, fc: 320 keys.
    matting = SimMattingNetwork(SimSettings()).state_dict()
    theirs = to_layout_keys(matting, MATTING_LAYOUT)
    assert len(theirs) == 410
    shapes = {
        "encoder.conv1.weight": (64, 11, 3, 3),
        "encoder.conv1_side.weight": (64, 20, 7, 7),
        "encoder.bn3.running_var": (128,),
        "encoder.layer1.0.downsample.0.weight": (256, 128, 1, 1),
        "encoder.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "decoder.global_module.convs.3.0.weight": (256, 2048, 3, 3),
        "decoder.global_module.convs.4.1.weight": (256, 2048, 1, 1),
        "decoder.global_module.project.0.weight": (256, 1280, 1, 1),
        "decoder.conv_up1.3.bias": (256,),
        "decoder.conv_up4_alpha.0.weight": (32, 72, 3, 3),
        "decoder.conv_up4_fb.4.weight": (6, 16, 1, 1),
        "decoder.conv_up4_attn.0.weight": (32, 64, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(theirs[key]) == shape, key
    classifier = SimClassifier(20, 1.0).state_dict()
    theirs = to_layout_keys(classifier, CLASSIFIER_LAYOUT)
    assert len(theirs) == 320
    for key, shape in {"conv1.weight": (64, 4, 7, 7), "layer3.5.bn2.running_mean": (256,), "fc.weight": (20, 2048), "fc.bias": (20,)}.items():
        assert tuple(theirs[key]) == shape, key


def to_layout_keys(state: dict, layout) -> dict:
    return {their: tuple(value.shape) for key, value in state.items() for their in layout.their_keys(key)}


# -- checkpoints -----------------------------------------------------------------------------------
def save_parts(model: SimModel, folder) -> dict:
    """Each part in the authors' form: {"state_dict": {"module." + their key: tensor}}."""
    paths = {}
    for part, (module, layouts) in model.checkpoint_parts().items():
        layout = layouts[0]
        state = {"module." + k: v for k, v in to_layout(module, layout).items()}
        paths[part] = folder / f"{part}.pth"
        torch.save({"state_dict": state, "epoch": 3}, paths[part])
    return paths


def test_authors_layout_round_trip(tmp_path, tiny, tiny_out):
    paths = save_parts(tiny, tmp_path)
    x = image(2, 64, seed=3)
    other = tiny_model(7)
    with torch.no_grad():
        assert not torch.allclose(other(x)["trimap"], tiny_out["trimap"])
        loaded = create_model(TINY, checkpoint=paths)
        out = loaded(x)
    for key in ("semantic", "trimap", "detail", "alpha"):
        assert torch.equal(out[key], tiny_out[key]), key
    assert set(loaded.checkpoint_sha256) == {"matting", "classifier", "trimap"}


def test_bad_checkpoints_raise(tmp_path, tiny):
    paths = save_parts(tiny, tmp_path)
    matting = torch.load(paths["matting"])["state_dict"]

    missing = dict(matting)
    del missing["module.decoder.conv_up4_alpha.4.weight"]
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        create_model(TINY, checkpoint={"matting": tmp_path / "missing.pth"})

    reshaped = dict(matting)
    reshaped["module.encoder.conv1_side.weight"] = torch.zeros(3, 20, 7, 7)
    torch.save({"state_dict": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match="shape differences"):
        create_model(TINY, checkpoint={"matting": tmp_path / "reshaped.pth"})

    # The classifier's file is not a matting network, nor is another model's file this model.
    with pytest.raises(CheckpointError):
        create_model(TINY, checkpoint={"matting": paths["classifier"]})
    torch.save(create_model("salient_tiny").state_dict(), tmp_path / "salient.pth")
    with pytest.raises(CheckpointError):
        create_model(TINY, checkpoint=tmp_path / "salient.pth")
    with pytest.raises(CheckpointError, match="no checkpoint part"):
        create_model(TINY, checkpoint={"discriminator": paths["classifier"]})
