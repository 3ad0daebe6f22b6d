"""SHM (Semantic Human Matting): stages, fusion, input checks, parameter counts, tsing90 checkpoints."""

from __future__ import annotations

import pytest
import torch

from mattrt.errors import CheckpointError, InputError
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.backbones import resnet50
from mattrt.models.checkpoints import to_layout
from mattrt.models.settings import TRIMAP_CLASSES
from mattrt.models.shm import TSING90_END_TO_END, TSING90_M_NET, TSING90_T_NET, ShmModel


def randomise_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, affine terms, biases and PReLU slopes, so every tensor of a
    checkpoint changes the outputs (fresh BN layers are the identity at inference)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.ndim != 1:
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var") or name.endswith("weight"):  # BN scales, PReLU slopes
                tensor.copy_(0.75 + 0.5 * noise)
            else:  # running means and biases
                tensor.copy_(0.2 * (noise - 0.5))
    return model


@pytest.fixture(scope="module")
def tiny() -> ShmModel:
    torch.manual_seed(0)
    return randomise_statistics(create_model("shm_tiny"))


@pytest.fixture(scope="module")
def full() -> ShmModel:
    return create_model("shm")


def image(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# -- registry and settings ------------------------------------------------------------------------
def test_registered_with_a_tiny_variant():
    assert "shm" in list_models(include_variants=False)
    tiny_settings = get_settings("shm_tiny")
    assert tiny_settings.variant_of == "shm" and tiny_settings.width < 1.0
    full_settings = get_settings("shm")
    assert full_settings.fusion == "unknown_blend" and full_settings.guidance == "trimap"
    assert full_settings.guidance_channels == 3 and full_settings.stages == ("semantic", "detail")
    # tsing90 trains on cv2 (BGR) images scaled to [0, 1] without mean/std.
    assert full_settings.channel_order == "BGR" and full_settings.mean == (0, 0, 0) and full_settings.std == (1, 1, 1)


@pytest.mark.parametrize("name", ["shm", "shm_tiny"])
def test_fixed_sizes_fit_the_architecture(name):
    s = get_settings(name)
    assert s.stride_multiple % 16 == 0  # M-Net's four 2x2 pools
    for size in (s.semantic_size, s.tile_size):
        assert size % s.stride_multiple == 0
    # At the canvas, T-Net's stride-8 feature map splits evenly into every pyramid bin.
    assert all((s.semantic_size // 8) % b == 0 for b in s.psp_bins)
    assert s.tile_overlap < s.tile_size


@pytest.mark.parametrize(
    "override, message",
    [
        ({"semantic_head": "deeplab"}, "unknown semantic_head 'deeplab'.*tsing90, zhao2017"),
        ({"tile_size": 72}, "tile_size must be a positive multiple of 16"),
        ({"semantic_size": 0}, "semantic_size must be a positive multiple of 16"),
        ({"stride_multiple": 8}, "multiple of 16"),
        ({"guidance": "none", "guidance_channels": 0}, "3 trimap probabilities"),
        ({"fusion": "average"}, "unknown fusion kind 'average'"),
    ],
)
def test_bad_settings_are_rejected(override, message):
    with pytest.raises(InputError, match=message):
        create_model("shm_tiny", **override)


# -- stages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_semantic_stage_gives_logits_and_probabilities_at_the_canvas(tiny, batch):
    stage = tiny.stages()["semantic"]
    assert stage.input_names == ["image"] and stage.output_names == ["semantic", "trimap"]
    (x,) = stage.example_inputs(batch, torch.Generator().manual_seed(2))
    size = tiny.settings.semantic_size
    assert x.shape == (batch, 3, size, size)
    with torch.no_grad():
        logits, trimap = stage.module(x)
    assert logits.shape == trimap.shape == (batch, len(TRIMAP_CLASSES), size, size)
    assert torch.isfinite(logits).all()
    assert trimap.min() >= 0 and trimap.max() <= 1
    torch.testing.assert_close(trimap.sum(dim=1), torch.ones(batch, size, size))
    torch.testing.assert_close(trimap, torch.softmax(logits, dim=1))  # no class permutation


@pytest.mark.parametrize("batch", [1, 2])
def test_detail_stage_reads_image_and_trimap_and_gives_raw_alpha(tiny, batch):
    stage = tiny.stages()["detail"]
    assert stage.input_names == ["image", "guidance"] and stage.output_names == ["detail"]
    assert [t.channels for t in stage.inputs] == [3, 3]
    x, guidance = stage.example_inputs(batch, torch.Generator().manual_seed(3))
    tile = tiny.settings.tile_size
    assert x.shape == (batch, 3, tile, tile) and guidance.shape == (batch, 3, tile, tile)
    with torch.no_grad():
        (detail,) = stage.module(x, guidance)
    assert detail.shape == (batch, 1, tile, tile)
    assert torch.isfinite(detail).all()
    # alpha_r is a linear output (no sigmoid, as the paper and tsing90): not confined to [0, 1]
    # by construction; it must still depend on the guidance channels.
    with torch.no_grad():
        (other,) = stage.module(x, 1.0 - guidance)
    assert not torch.allclose(detail, other)


def test_fusion_is_foreground_plus_unknown_times_raw_alpha(tiny):
    x = image(1, 64, 64, seed=4)
    with torch.no_grad():
        out = tiny(x)
    background, unknown, foreground = out["trimap"].unbind(dim=1)
    expected = foreground + unknown * out["detail"][:, 0]
    torch.testing.assert_close(out["alpha"][:, 0], expected)
    # Eq. (3) = eq. (4): (1 - U) F / (F + B) + U alpha_r.
    eq3 = (1 - unknown) * foreground / (foreground + background) + unknown * out["detail"][:, 0]
    torch.testing.assert_close(out["alpha"][:, 0], eq3)


def test_zhao2017_head_runs_at_the_same_sizes():
    model = create_model("shm_tiny", semantic_head="zhao2017")
    x = image(2, 96, 64, seed=5)
    with torch.no_grad():
        out = model(x)
    assert out["semantic"].shape == (2, 3, 96, 64) and out["alpha"].shape == (2, 1, 96, 64)
    assert torch.isfinite(out["alpha"]).all()


def test_auxiliary_classifier_does_not_affect_outputs(tiny):
    x = image(1, 64, 64, seed=6)
    with torch.no_grad():
        before = tiny(x)["alpha"]
        saved = {k: v.clone() for k, v in tiny.tnet.head.aux_classifier.state_dict().items()}
        for p in tiny.tnet.head.aux_classifier.parameters():
            p.add_(1.0)
        after = tiny(x)["alpha"]
        tiny.tnet.head.aux_classifier.load_state_dict(saved)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


# -- bad input ------------------------------------------------------------------------------------
# -- structure and parameter counts ---------------------------------------------------------------
def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # affine weight + bias (running statistics are buffers)


# torchvision's ResNet-50 has 25,557,032 parameters (its model card); without the 1000-way fc:
RESNET50_FEATURES = 25_557_032 - (2048 * 1000 + 1000)
# VGG16's 13 conv layers (Simonyan & Zisserman config D): 14,714,688 parameters.
VGG16_CONVS = 14_714_688


def test_full_model_parameter_count(full):
    # T-Net (tsing90): ResNet-50 + 4 pyramid 1x1 convs 2048 -> 2048 + 1x1 (5 x 2048 -> 1024, bias)
    # + three upsampling blocks (3x3 conv with bias, BN, one PReLU slope) 1024 -> 256 -> 64 -> 64
    # + 1x1 classifier to 3 + the unused auxiliary Linear 1024 -> 256 -> 3.
    tnet = (
        RESNET50_FEATURES
        + 4 * conv(2048, 2048, 1, bias=False)
        + conv(5 * 2048, 1024, 1)
        + conv(1024, 256, 3) + bn(256) + 1
        + conv(256, 64, 3) + bn(64) + 1
        + conv(64, 64, 3) + bn(64) + 1
        + conv(64, 3, 1)
        + (1024 * 256 + 256) + (256 * 3 + 3)
    )
    # M-Net: VGG16's convs with conv1_1 reading 6 channels instead of 3, BN after each of the
    # 13 convs; decoder 5x5 convs with bias + BN 512 -> 512 -> 256 -> 128 -> 64 -> 64, 5x5 to 1.
    encoder = VGG16_CONVS + 3 * 64 * 9 + 2 * bn(64) + 2 * bn(128) + 3 * bn(256) + 6 * bn(512)
    decoder = (
        conv(512, 512, 5) + bn(512) + conv(512, 256, 5) + bn(256) + conv(256, 128, 5) + bn(128)
        + conv(128, 64, 5) + bn(64) + conv(64, 64, 5) + bn(64) + conv(64, 1, 5)
    )
    assert full.stage_parameters() == {"semantic": tnet, "detail": encoder + decoder}
    assert full.num_parameters() == tnet + encoder + decoder  # 79,266,506


def test_zhao2017_tnet_parameter_count():
    model = create_model("shm", semantic_head="zhao2017")
    # Deep stem (3x3 convs 3 -> 64 -> 64 -> 128, BN each) replaces the 7x7 conv + BN, and layer1's
    # first block reads 128 channels (its conv1 and downsample grow by 64 input channels).
    backbone = (
        RESNET50_FEATURES - conv(3, 64, 7, bias=False) - bn(64)
        + conv(3, 64, 3, bias=False) + bn(64)
        + conv(64, 64, 3, bias=False) + bn(64)
        + conv(64, 128, 3, bias=False) + bn(128)
        + 64 * 64 + 64 * 256
    )
    # PSP head: 4 x (1x1 2048 -> 512 + BN), 3x3 4096 -> 512 + BN, 1x1 512 -> 3 with bias.
    head = 4 * (conv(2048, 512, 1, bias=False) + bn(512)) + conv(4096, 512, 3, bias=False) + bn(512) + conv(512, 3, 1)
    assert model.stage_parameters()["semantic"] == backbone + head  # 46,707,139: PSPNet-50's ~46.7M
    assert not hasattr(model.tnet.head, "aux_classifier")


def test_tnet_dilation_schemes(full):
    backbone = full.tnet.backbone
    assert backbone.conv1.kernel_size == (7, 7)  # torchvision stem, as tsing90's extractors.py
    assert backbone.layer3[0].conv2.stride == (1, 1) and backbone.layer4[0].downsample[0].stride == (1, 1)
    # tsing90's _make_layer leaves the first block of a dilated stage undilated.
    assert backbone.layer3[0].conv2.dilation == (1, 1) and backbone.layer3[1].conv2.dilation == (2, 2)
    assert backbone.layer4[0].conv2.dilation == (1, 1) and backbone.layer4[2].conv2.dilation == (4, 4)
    zhao = create_model("shm_tiny", semantic_head="zhao2017").tnet.backbone
    assert zhao.layer3[0].conv2.dilation == (2, 2) and zhao.layer4[0].conv2.dilation == (4, 4)
    assert zhao.conv3.kernel_size == (3, 3)


# -- checkpoints ----------------------------------------------------------------------------------
def test_tsing90_key_set_at_full_width(full):
    theirs = to_layout(full, TSING90_END_TO_END)
    # net_F.state_dict() of tsing90's code: t_net = ResNet-50 (318 tensors without fc) + 4 pyramid
    # convs + bottleneck (2) + 3 x up block (conv 2, BN 5, PReLU 1) + final (2) + classifier (4)
    # = 354; m_net = 19 convs x 2 + 18 BN x 5 = 128.
    assert len(theirs) == 482
    assert sum(k.startswith("t_net.") for k in theirs) == 354
    assert sum(k.startswith("m_net.") for k in theirs) == 128
    expected_shapes = {
        "t_net.feats.conv1.weight": (64, 3, 7, 7),
        "t_net.feats.layer3.0.downsample.0.weight": (1024, 512, 1, 1),
        "t_net.feats.layer4.2.bn3.num_batches_tracked": (),
        "t_net.psp.stages.3.1.weight": (2048, 2048, 1, 1),
        "t_net.psp.bottleneck.weight": (1024, 10240, 1, 1),
        "t_net.psp.bottleneck.bias": (1024,),
        "t_net.up_1.conv.0.weight": (256, 1024, 3, 3),
        "t_net.up_2.conv.1.running_var": (64,),
        "t_net.up_3.conv.2.weight": (1,),
        "t_net.final.0.weight": (3, 64, 1, 1),
        "t_net.classifier.0.weight": (256, 1024),
        "t_net.classifier.2.bias": (3,),
        "m_net.conv_1_1.0.weight": (64, 6, 3, 3),
        "m_net.conv_5_3.1.running_mean": (512,),
        "m_net.deconv_5.0.weight": (512, 512, 5, 5),
        "m_net.deconv_1.0.weight": (64, 64, 5, 5),
        "m_net.conv_0.weight": (1, 64, 5, 5),
        "m_net.conv_0.bias": (1,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(theirs[key].shape) == shape, key
    assert not any(k.startswith(("tnet.", "mnet.")) for k in theirs)
    parts = full.checkpoint_parts()
    assert set(to_layout(parts["t_net"][0], TSING90_T_NET)) == {k for k in theirs if k.startswith("t_net.")}
    assert set(to_layout(parts["m_net"][0], TSING90_M_NET)) == {k for k in theirs if k.startswith("m_net.")}


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("wrapping", ["flat", "state_dict", "tsing90_save", "module_prefix"])
def test_tsing90_end_to_end_checkpoint_round_trip(tiny, tmp_path, wrapping):
    theirs = to_layout(tiny, TSING90_END_TO_END)
    if wrapping == "state_dict":
        obj = {"state_dict": theirs}
    elif wrapping == "tsing90_save":  # train.py Train_Log.save_model
        obj = {"epoch": 7, "state_dict": theirs}
    elif wrapping == "module_prefix":
        obj = {"state_dict": {"module." + k: v for k, v in theirs.items()}}
    else:
        obj = theirs
    path = tmp_path / "ckpt_lastest.pth"
    torch.save(obj, path)
    loaded = create_model("shm_tiny", checkpoint=path)
    assert isinstance(loaded.checkpoint_sha256, str) and len(loaded.checkpoint_sha256) == 64
    x = image(2, 64, 96, seed=7)
    expected, got = _outputs(tiny, x), _outputs(loaded, x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_tsing90_pretrained_pair_loads_by_part(tiny, tmp_path):
    t_path, m_path = tmp_path / "t_net.pth", tmp_path / "m_net.pth"
    torch.save({"epoch": 1, "state_dict": to_layout(tiny.tnet, TSING90_T_NET)}, t_path)
    torch.save({"epoch": 1, "state_dict": to_layout(tiny.mnet, TSING90_M_NET)}, m_path)
    loaded = create_model("shm_tiny", checkpoint={"t_net": t_path, "m_net": m_path})
    assert set(loaded.checkpoint_sha256) == {"t_net", "m_net"}
    x = image(1, 64, 64, seed=8)
    expected, got = _outputs(tiny, x), _outputs(loaded, x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_checkpoint_missing_key(tiny, tmp_path):
    theirs = to_layout(tiny, TSING90_END_TO_END)
    del theirs["m_net.deconv_3.0.weight"]
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": theirs}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): m_net\.deconv_3\.0\.weight"):
        create_model("shm_tiny", checkpoint=path)


def test_checkpoint_wrong_shape(tiny, tmp_path):
    theirs = to_layout(tiny, TSING90_END_TO_END)
    theirs["t_net.final.0.weight"] = torch.zeros(2, *theirs["t_net.final.0.weight"].shape[1:])
    path = tmp_path / "shape.pth"
    torch.save(theirs, path)
    with pytest.raises(CheckpointError, match=r"shape differences \(1\): t_net\.final\.0\.weight"):
        create_model("shm_tiny", checkpoint=path)


def test_checkpoint_of_a_full_width_model_into_the_tiny_variant_fails(full, tmp_path):
    path = tmp_path / "full.pth"
    torch.save(to_layout(full.mnet, TSING90_M_NET), path)
    with pytest.raises(CheckpointError, match="shape differences"):
        create_model("shm_tiny", checkpoint={"m_net": path})


def test_checkpoint_from_another_model(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(resnet50(width=0.125, num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit model 'shm_tiny'"):
        create_model("shm_tiny", checkpoint=path)


def test_a_pretraining_file_is_not_a_whole_model(tiny, tmp_path):
    path = tmp_path / "t_only.pth"
    torch.save({"state_dict": to_layout(tiny.tnet, TSING90_T_NET)}, path)
    # 128 M-Net tensors, of which the 18 BN step counters are tolerated (absent before PyTorch 0.4.1).
    with pytest.raises(CheckpointError, match=r"missing keys \(110\): m_net\."):
        create_model("shm_tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match="no checkpoint part trimap.*t_net, m_net"):
        create_model("shm_tiny", checkpoint={"trimap": path})
