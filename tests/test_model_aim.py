"""AIM (models/aim.py): stages, fusion, input checks, parameter count, the authors' checkpoint layout."""

from __future__ import annotations

import pytest
import torch

from mattrt.errors import CheckpointError, InputError
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.aim import AUTHORS_LAYOUT, AimModel
from mattrt.models.backbones import resnet18
from mattrt.models.checkpoints import to_layout


def _randomise(model: AimModel, seed: int = 0, head_scale: float = 1.0) -> AimModel:
    """Non-trivial BatchNorm statistics and a semantic head whose three classes all occur.

    Fresh random weights put nearly every pixel in one class, which would leave the fusion
    tests nothing to check; the head's biases are set to centre each class's logits on a probe.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
        head = model.semantic_decoder.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * head_scale)
        head.bias.zero_()
        probe = torch.randn(1, 3, 64, 64, generator=gen)
        features, _ = model.encoder(probe)
        last, _ = model.semantic_decoder.features(features[-1])
        logits = head(model.semantic_decoder.se0(last))
        head.bias.copy_(-logits.mean(dim=(0, 2, 3)))
    return model


@pytest.fixture(scope="module")
def tiny() -> AimModel:
    return _randomise(create_model("aim_tiny"))


@pytest.fixture(scope="module")
def full() -> AimModel:
    return create_model("aim")


def _image(batch: int, height: int = 64, width: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_registered_with_authors_settings():
    assert "aim" in list_models(include_variants=False)
    assert "aim_tiny" in list_models() and get_settings("aim_tiny").variant_of == "aim"
    s = get_settings("aim")
    assert (s.fusion, s.guidance, s.guidance_channels, s.stride_multiple) == ("argmax_trimap", "none", 0, 32)
    assert s.semantic_size % 32 == 0 and s.tile_size % 32 == 0
    assert s.psp_bins == (1, 3, 5) and s.width == 1.0


@pytest.mark.parametrize("batch", [1, 2])
def test_stage_shapes_and_ranges(tiny, batch):
    stages = tiny.stages()
    assert list(stages) == ["semantic", "detail"]
    semantic, detail = stages["semantic"], stages["detail"]
    assert semantic.input_names == ["image"] and semantic.output_names == ["semantic", "trimap"]
    assert detail.input_names == ["image"] and detail.output_names == ["detail"]
    assert semantic.spatial_size == detail.spatial_size == 64
    with torch.no_grad():
        scores, trimap = semantic.module(*semantic.example_inputs(batch))
        (alpha,) = detail.module(*detail.example_inputs(batch))
    assert scores.shape == trimap.shape == (batch, 3, 64, 64)
    assert alpha.shape == (batch, 1, 64, 64)
    assert 0.0 <= scores.min() and scores.max() <= 1.0
    assert 0.0 <= trimap.min() and trimap.max() <= 1.0
    torch.testing.assert_close(trimap.sum(1), torch.ones(batch, 64, 64))
    assert torch.equal(trimap.argmax(1), scores.argmax(1))
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0


def test_stages_share_weights(tiny):
    stages = tiny.stages()
    semantic_params = {id(p) for p in stages["semantic"].module.parameters()}
    detail_params = {id(p) for p in stages["detail"].module.parameters()}
    model_params = {id(p) for p in tiny.parameters()}
    # The detail stage holds every weight (its attention comes from the semantic decoder).
    assert semantic_params < detail_params == model_params
    assert {id(p) for p in tiny.matting_decoder.parameters()}.isdisjoint(semantic_params)


def _official_fusion(scores: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """JizhiziLi/AIM get_masked_local_from_global, restated: the index of torch.max over the
    three scores picks 0 (background), the raw alpha (transition) or 1 (foreground)."""
    index = scores.max(dim=1, keepdim=True).indices
    return detail * (index == 1) + (index == 2).to(detail.dtype)


def test_default_fusion_is_official_argmax_mask_including_ties():
    # A large head scale saturates the sigmoids, so exact ties (1.0 == 1.0) occur: the official
    # code's torch.max keeps the first (lower) class there.
    model = _randomise(create_model("aim_tiny"), seed=3, head_scale=200.0)
    with torch.no_grad():
        out = model(_image(2, 64, 64, seed=4))
    scores = out["semantic"]
    top2 = scores.sort(dim=1, descending=True).values
    assert (top2[:, 0] == top2[:, 1]).any(), "precondition: some tied scores"
    index = scores.argmax(1)
    assert all((index == c).any() for c in range(3)), "precondition: all three classes present"
    torch.testing.assert_close(out["alpha"], _official_fusion(scores, out["detail"]), rtol=0, atol=0)


def test_soft_fusion_is_paper_equation_2(tiny):
    soft = create_model("aim_tiny", fusion="aim_soft")
    soft.load_state_dict(tiny.state_dict())
    image = _image(1)
    with torch.no_grad():
        out = soft(image)
        reference = tiny(image)
    for name in ("semantic", "trimap", "detail"):
        assert torch.equal(out[name], reference[name])
    s = out["semantic"]
    unified = (0.5 * s[:, 1:2] + s[:, 2:3]) / s.sum(1, keepdim=True)  # background 0, transition 0.5, foreground 1
    confidence = 2 * (unified - 0.5).abs()
    expected = (1 - confidence) * out["detail"] + confidence * unified
    torch.testing.assert_close(out["alpha"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["alpha"], reference["alpha"])


def test_bad_settings_raise():
    with pytest.raises(InputError, match="unknown fusion"):
        create_model("aim_tiny", fusion="average")
    with pytest.raises(InputError, match="tile_size must be a positive multiple of 32"):
        create_model("aim_tiny", tile_size=80)
    with pytest.raises(InputError, match="guidance"):
        create_model("aim_tiny", guidance="trimap", guidance_channels=3)


def _table2_parameter_count(with_imagenet_fc: bool) -> int:
    """Parameters of the supplementary Table 2 network, counted layer by layer.

    Decoder and PSP-lateral convolutions carry biases (nn.Conv2d defaults in the authors'
    AimNet); the encoder's and the PSP bins' convolutions and the SE linears have none.
    """

    def conv(k, cin, cout, bias=True):
        return k * k * cin * cout + (cout if bias else 0)

    def bn(c):
        return 2 * c

    def conv_bn(cin, cout, k=3):
        return conv(k, cin, cout) + bn(cout)

    def basic_block(cin, cout):
        count = conv(3, cin, cout, False) + bn(cout) + conv(3, cout, cout, False) + bn(cout)
        if cin != cout:
            count += conv(1, cin, cout, False) + bn(cout)
        return count

    encoder = conv(7, 3, 64, False) + bn(64)
    cin = 64
    for cout, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):  # ResNet-34 layer1..layer4
        encoder += basic_block(cin, cout) + (blocks - 1) * basic_block(cout, cout)
        cin = cout
    fc = 512 * 1000 + 1000

    psp = 3 * conv(1, 512, 512, False) + conv(1, 4 * 512, 512)
    psp += sum(conv_bn(512, c) for c in (256, 128, 64, 64))
    blocks = [(1024, 512, 256), (512, 256, 128), (256, 128, 64), (128, 64, 64)]  # SD_4..SD_1 / MD_4..MD_1
    decoder_blocks = sum(conv_bn(a, b) + conv_bn(b, b) + conv_bn(b, c) for a, b, c in blocks)
    last_block = conv_bn(128, 64) + conv_bn(64, 64)  # SD_0 / MD_0
    se = sum(2 * c * (c // 16) for c in (256, 128, 64, 64, 64))
    semantic = psp + decoder_blocks + last_block + se + conv(7, 2, 1) + conv(3, 64, 3)
    matting = 3 * conv_bn(512, 512) + decoder_blocks + last_block + conv(3, 64, 1)
    return encoder + semantic + matting + (fc if with_imagenet_fc else 0)


def test_full_parameter_count_matches_table2_and_paper(full):
    # The authors' ResNet keeps its (unused) ImageNet fc; with it the count is the paper's 55.3M
    # (supplement, section 1.1), without it 54.8M.
    expected = _table2_parameter_count(with_imagenet_fc=True)
    assert full.num_parameters() == expected
    assert round(expected / 1e6, 1) == 55.3
    assert round(_table2_parameter_count(with_imagenet_fc=False) / 1e6, 1) == 54.8


def test_authors_key_set_at_full_width(full):
    theirs = to_layout(full, AUTHORS_LAYOUT)
    # From JizhiziLi/AIM AimNet().state_dict(): 700 keys, the backbone under resnet.* (218,
    # fc included) and again under encoder0..4 (216: everything but fc); 266 decoder keys.
    assert len(theirs) == 700
    assert sum(k.startswith("resnet.") for k in theirs) == 218
    assert sum(k.startswith("encoder") for k in theirs) == 216
    for key in (
        "resnet.conv1.weight",
        "encoder0.0.weight",
        "encoder0.1.running_var",
        "resnet.layer1.2.bn2.num_batches_tracked",
        "encoder1.0.2.bn2.num_batches_tracked",
        "encoder2.0.downsample.0.weight",
        "encoder4.2.conv2.weight",
        "resnet.fc.weight",
        "psp_module.stages.2.1.weight",
        "psp_module.bottleneck.bias",
        "psp1.1.running_mean",
        "decoder4_g.6.weight",
        "decoder0_g.3.bias",
        "decoder4_g_se.fc.2.weight",
        "decoder0_g_spatial.weight",
        "decoder_final_g.bias",
        "bridge_block.7.running_var",
        "decoder0_l.4.weight",
        "decoder_final_l.weight",
    ):
        assert key in theirs, key
    for key in ("encoder0.2.weight", "decoder0_g.6.weight", "encoder4.fc.weight", "psp_module.stages.3.1.weight"):
        assert key not in theirs, key
    assert theirs["resnet.fc.weight"].shape == (1000, 512)
    assert theirs["decoder4_g.0.weight"].shape == (512, 1024, 3, 3)
    assert theirs["decoder0_g_se.fc.0.weight"].shape == (4, 64)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module"])
def test_authors_layout_round_trip(tiny, tmp_path, wrap):
    state = to_layout(tiny, AUTHORS_LAYOUT)
    assert torch.equal(state["resnet.layer3.0.conv1.weight"], state["encoder3.0.conv1.weight"])
    if wrap == "module":  # DataParallel-saved, as their train.py does
        state = {"state_dict": {"module." + k: v for k, v in state.items()}}
    elif wrap == "state_dict":  # their checkpoints: {"state_dict": ...}
        state = {"state_dict": state}
    path = tmp_path / "aim_tiny_authors.pth"
    torch.save(state, path)
    loaded = create_model("aim_tiny", checkpoint=path)
    assert loaded.checkpoint_sha256 is not None
    image = _image(1)
    with torch.no_grad():
        expected, got = tiny(image), loaded(image)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_bad_checkpoints_raise(tiny, tmp_path):
    good = to_layout(tiny, AUTHORS_LAYOUT)
    cases = {}
    cases["missing"] = {k: v for k, v in good.items() if k != "decoder2_l.3.weight"}
    wrong_shape = dict(good)
    wrong_shape["decoder_final_l.weight"] = torch.zeros(2, *good["decoder_final_l.weight"].shape[1:])
    cases["shape"] = wrong_shape
    disagreeing = dict(good)
    disagreeing["encoder2.1.conv1.weight"] = good["encoder2.1.conv1.weight"] + 1.0
    cases["copies"] = disagreeing
    cases["other_model"] = resnet18(num_classes=10).state_dict()
    messages = {
        "missing": "decoder2_l.3.weight",
        "shape": "decoder_final_l.weight",
        "copies": "differs from its copy",
        "other_model": "does not fit model 'aim_tiny'",
    }
    for name, state in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"state_dict": state}, path)
        with pytest.raises(CheckpointError, match=messages[name]):
            create_model("aim_tiny", checkpoint=path)
