"""Salient Image Matting (`salient`, `salient_tiny`): stages, fusion, input checks, parameter
counts and checkpoint loading (the STN in xuebinqin/U-2-Net's U2NET(3, 3) layout)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batchnorm

from mattrt.errors import CheckpointError, InputError
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.checkpoints import load_checkpoint, to_layout
from mattrt.models.fusion import unknown_blend
from mattrt.models.salient import SalientModel
from mattrt.models.u2net import RSU, U2Net, u2net_layout

TINY = "salient_tiny"


def tiny_model(seed: int) -> SalientModel:
    torch.manual_seed(seed)
    model = create_model(TINY)
    randomise_batchnorm(model, seed)
    return model


def image(batch: int, size: int | tuple[int, int], seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> SalientModel:
    return tiny_model(1)


@pytest.fixture(scope="module")
def full() -> SalientModel:
    torch.manual_seed(0)
    return create_model("salient")


# -- registry and settings -------------------------------------------------------------------
def test_registered_with_tiny_variant():
    assert {"salient", "salient_tiny"} <= set(list_models())
    assert "salient_tiny" not in list_models(include_variants=False)
    full_settings, tiny_settings = get_settings("salient"), get_settings(TINY)
    assert tiny_settings.variant_of == "salient"
    assert full_settings.stages == ("semantic", "detail")
    assert full_settings.fusion == "unknown_blend"
    assert (full_settings.guidance, full_settings.guidance_channels) == ("trimap", 3)
    assert full_settings.stride_multiple == 32
    assert full_settings.semantic_size == 320 and full_settings.tile_size == 512
    for s in (full_settings, tiny_settings):
        assert s.semantic_size % s.stride_multiple == 0 and s.tile_size % s.stride_multiple == 0
        assert 0 <= s.tile_overlap < s.tile_size


def test_settings_that_contradict_the_architecture_are_rejected():
    with pytest.raises(InputError, match="trimap probabilities"):
        create_model(TINY, guidance_channels=1)
    with pytest.raises(InputError, match="stream_channels must list 4"):
        create_model(TINY, stream_channels=(32, 64, 128))


# -- stages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_semantic_stage_shapes_and_ranges(tiny, batch):
    stage = tiny.stages()["semantic"]
    assert stage.input_names == ["image"] and stage.output_names == ["semantic", "trimap"]
    assert stage.spatial_size == get_settings(TINY).semantic_size
    (x,) = stage.example_inputs(batch, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        semantic, trimap = stage.module(x)
    size = stage.spatial_size
    assert semantic.shape == trimap.shape == (batch, 3, size, size)
    assert torch.allclose(trimap, torch.softmax(semantic, 1))
    assert trimap.min() >= 0 and trimap.max() <= 1
    assert torch.allclose(trimap.sum(1), torch.ones(batch, size, size), atol=1e-5)
    assert semantic.min() < 0 < semantic.max()  # logits, not probabilities


@pytest.mark.parametrize("batch", [1, 2])
def test_detail_stage_shapes_and_ranges(tiny, batch):
    stage = tiny.stages()["detail"]
    assert stage.input_names == ["image", "guidance"] and stage.output_names == ["detail"]
    assert [t.channels for t in stage.inputs] == [3, 3]
    assert stage.spatial_size == get_settings(TINY).tile_size
    inputs = stage.example_inputs(batch, generator=torch.Generator().manual_seed(10 + batch))
    with torch.no_grad():
        outputs = stage.module(*inputs)
    assert isinstance(outputs, tuple) and len(outputs) == 1
    (detail,) = outputs
    assert detail.shape == (batch, 1, stage.spatial_size, stage.spatial_size)
    assert detail.min() >= 0 and detail.max() <= 1
    assert detail.std() > 0


def test_stage_modules_share_the_model_parameters(tiny):
    stages = tiny.stages()
    model_params = {id(p) for p in tiny.parameters()}
    stage_params = [id(p) for s in stages.values() for p in s.module.parameters()]
    assert set(stage_params) == model_params and len(stage_params) == len(model_params)
    # the state_dict is exactly the two parts, each parameter under one name
    parts = tiny.checkpoint_parts()
    assert len(tiny.state_dict()) == sum(len(module.state_dict()) for module, _ in parts.values())
    assert all(k.startswith(("stn.", "matting.")) for k in tiny.state_dict())


def test_fusion_is_foreground_plus_unknown_times_detail(tiny):
    x = image(1, 64, seed=4)
    with torch.no_grad():
        out = tiny(x)
    background, unknown, foreground = out["trimap"].unbind(1)
    expected = foreground + unknown * out["detail"][:, 0]
    assert torch.allclose(out["alpha"][:, 0], expected, atol=1e-6)
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1
    # detail only acts inside the unknown probability: changing it moves alpha by at most U
    with torch.no_grad():
        shifted = unknown_blend(out["trimap"], 1 - out["detail"])
    assert torch.all((shifted - out["alpha"]).abs() <= unknown.unsqueeze(1) + 1e-6)


def test_side_outputs_for_deep_supervision(tiny):
    x = image(1, 64, seed=5)
    with torch.no_grad():
        sides = tiny.side_outputs(x)
        semantic = tiny(x)["semantic"]
    assert len(sides) == 7
    assert all(s.shape == (1, 3, 64, 64) for s in sides)
    assert torch.allclose(sides[0], semantic, atol=1e-6)
    # the fused map is outconv over the six side maps
    with torch.no_grad():
        fused = tiny.stn.outconv(torch.cat(sides[1:], 1))
    assert torch.allclose(fused, sides[0], atol=1e-6)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(1, 4, 64, 64), "expected 3 channels"),
        (torch.randn(1, 1, 64, 64), "expected 3 channels"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "expected a float tensor"),
        (torch.randn(1, 3, 64, 80), "multiples of 32, got 64 x 80"),
        (torch.randn(1, 3, 48, 64), "multiples of 32, got 48 x 64"),
        (torch.randn(3, 64, 64), "expected 4 dimensions"),
    ],
)
def test_bad_input_raises_input_error(tiny, bad, message):
    with pytest.raises(InputError, match=message):
        tiny(bad)
    with pytest.raises(InputError, match=message):
        tiny.side_outputs(bad)


# -- parameter counts (full width) -------------------------------------------------------------
def rebnconv_params(cin: int, cout: int) -> int:
    return cin * cout * 9 + cout + 2 * cout  # conv weight + bias, BN weight + bias


def rsu_params(depth: int, cin: int, mid: int, cout: int) -> int:
    """RSU-L (and RSU-4F, same conv count) from U2Net's layer table (Qin et al., Fig. 2)."""
    total = rebnconv_params(cin, cout) + rebnconv_params(cout, mid)  # rebnconvin, rebnconv1
    total += (depth - 1) * rebnconv_params(mid, mid)  # rebnconv2..rebnconvL
    total += (depth - 2) * rebnconv_params(2 * mid, mid) + rebnconv_params(2 * mid, cout)  # decoder
    return total


def u2net_params(out_ch: int) -> int:
    # U2Net's table 1 / model/u2net.py: (L, in, mid, out) of the encoder and decoder stages.
    stages = [
        (7, 3, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512), (4, 512, 256, 512),
        (4, 512, 256, 512), (4, 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64),
        (7, 128, 16, 64),
    ]
    sides = sum(c * out_ch * 9 + out_ch for c in (64, 64, 128, 256, 512, 512))
    return sum(rsu_params(*s) for s in stages) + sides + 6 * out_ch * out_ch + out_ch


def test_u2net_count_matches_the_published_figure():
    # The U^2-Net paper reports 44.0 M parameters (176.3 MB) for the 1-channel network.
    assert round(u2net_params(1) / 1e6, 1) == 44.0
    assert sum(p.numel() for p in U2Net(3, 1).parameters()) == u2net_params(1)


def densepn_matting_params(s) -> int:
    """The matting network from the module docstring's layer description."""
    def bn(c):
        return 2 * c

    # torchvision ResNet-34 has 21,797,672 parameters; minus its fc (512 * 1000 + 1000), plus
    # three more conv1 input channels (64 x 3 x 7 x 7).
    encoder = 21_797_672 - 513_000 + 64 * 3 * 49
    streams, k, layers, b = s.stream_channels, s.dense_growth_rate, s.dense_layers, s.dense_bottleneck
    lateral = sum(cin * c + bn(c) for cin, c in zip((64, 128, 256, 512), streams))
    dense = 0
    for c in streams:
        for i in range(layers):
            cin = c + i * k
            dense += bn(cin) + cin * b * k + bn(b * k) + b * k * k * 9
    fused_in = sum(c + layers * k for c in streams)
    fuse = sum(fused_in * c + bn(c) for c in streams)
    merge, half, full = s.head_channels
    head = (sum(streams) * merge * 9 + bn(merge)) + ((merge + 64) * half * 9 + bn(half))
    head += (half + 6) * full * 9 + bn(full) + full * 9 + 1
    return encoder + lateral + s.densepn_repeats * (dense + fuse) + head


def test_full_parameter_count(full):
    settings = get_settings("salient")
    # The 3-class STN: U2Net's count with 3 output maps per side and a 18 -> 3 fusion conv.
    assert full.stage_parameters()["semantic"] == u2net_params(3) == 44_037_579
    assert full.stage_parameters()["detail"] == densepn_matting_params(settings)
    assert full.num_parameters() == u2net_params(3) + densepn_matting_params(settings)


# -- checkpoints -------------------------------------------------------------------------------
def test_full_width_stn_keys_match_u2net_layout(full):
    theirs = to_layout(full.stn, u2net_layout(3))
    # model/u2net.py: 11 RSU blocks with 2L REBNCONVs each (L = 7,6,5,4,4,4 | 4,4,5,6,7 -> 112),
    # 7 state entries per REBNCONV (conv w/b, BN w/b/mean/var/steps), 6 side convs + outconv.
    assert len(theirs) == 112 * 7 + 7 * 2 == 798
    shapes = {k: tuple(v.shape) for k, v in theirs.items()}
    assert shapes["stage1.rebnconvin.conv_s1.weight"] == (64, 3, 3, 3)
    assert shapes["stage1.rebnconv7.conv_s1.weight"] == (32, 32, 3, 3)
    assert shapes["stage1d.rebnconv6d.conv_s1.weight"] == (16, 32, 3, 3)
    assert shapes["stage4d.rebnconvin.conv_s1.weight"] == (256, 1024, 3, 3)
    assert shapes["stage5d.rebnconv1d.bn_s1.running_var"] == (512,)
    assert shapes["stage6.rebnconv4.conv_s1.weight"] == (256, 256, 3, 3)
    assert shapes["side1.weight"] == (3, 64, 3, 3) and shapes["side6.weight"] == (3, 512, 3, 3)
    assert shapes["outconv.weight"] == (3, 18, 1, 1) and shapes["outconv.bias"] == (3,)
    assert "stage2.rebnconv6.bn_s1.num_batches_tracked" in theirs
    assert not any(k.startswith(("stage2.rebnconv7", "stage5.pool", "pool")) for k in theirs)
    # RSU-4F dilations 1, 2, 4, 8 and 4, 2, 1; RSU-L bottom conv dilation 2.
    stage5 = full.stn.stage5
    assert [getattr(stage5, f"rebnconv{i}").conv_s1.dilation[0] for i in range(1, 5)] == [1, 2, 4, 8]
    assert [getattr(stage5, f"rebnconv{i}d").conv_s1.dilation[0] for i in (3, 2, 1)] == [4, 2, 1]
    assert full.stn.stage1.rebnconv7.conv_s1.dilation == (2, 2)
    assert isinstance(full.stn.stage4, RSU) and full.stn.stage4.depth == 4


def test_full_width_matting_keys_follow_the_documented_layout(full):
    keys = full.matting.state_dict()
    # ResNet-34: 36 convs (33 + 3 downsample) and 36 BNs (5 entries each) = 216;
    # lateral: 4 x (conv + BN) = 24; per DensePN repeat: 4 streams x 4 dense layers x
    # (2 convs + 2 BNs) = 192 plus 4 fuse convs + BNs = 24; head: 3 x (conv + BN) + predict (2).
    assert len(keys) == 216 + 24 + 3 * (192 + 24) + 20 == 908
    assert tuple(keys["encoder.conv1.weight"].shape) == (64, 6, 7, 7)
    assert tuple(keys["encoder.layer4.2.conv2.weight"].shape) == (512, 512, 3, 3)
    assert tuple(keys["lateral.3.conv.weight"].shape) == (256, 512, 1, 1)
    assert tuple(keys["densepn.2.blocks.0.denselayer4.conv1.weight"].shape) == (128, 32 + 3 * 32, 1, 1)
    assert tuple(keys["densepn.0.fuse.1.conv.weight"].shape) == (64, 160 + 192 + 256 + 384, 1, 1)
    assert tuple(keys["head.predict.weight"].shape) == (1, 32, 3, 3)
    assert "head.refine_full.bn.running_mean" in keys


def test_one_class_saliency_u2net_does_not_fit_the_stn(full, tmp_path):
    # At full width, in memory: every side conv and outconv differs (weight and bias each).
    saliency = U2Net(3, 1).state_dict()  # a U2NET(3, 1) salient-object checkpoint
    with pytest.raises(CheckpointError, match=r"shape differences \(14\): side1.weight: checkpoint \(1, 64, 3, 3\)"):
        load_checkpoint(full.stn, saliency, full.checkpoint_parts()["trimap"][1])
    # Through create_model (tiny width, from a file): the message names all 14 head tensors.
    path = tmp_path / "u2net_saliency.pth"
    torch.save(U2Net(3, 1, width=get_settings(TINY).width).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        create_model(TINY, checkpoint={"trimap": path})
    text = str(info.value)
    assert "U2Net with 1 output map(s)" in text and "needs U2NET(3, 3)" in text
    assert "Output-head shape differences (14)" in text
    for i in range(1, 7):
        assert f"side{i}.weight: checkpoint (1, " in text and f"side{i}.bias: checkpoint (1,) vs model (3,)" in text
    assert "outconv.weight: checkpoint (1, 6, 1, 1) vs model (3, 18, 1, 1)" in text
    assert "outconv.bias: checkpoint (1,) vs model (3,)" in text


def save_parts(model: SalientModel, tmp_path, wrap) -> dict[str, str]:
    stn = wrap(to_layout(model.stn, u2net_layout(3)))
    matting = wrap(model.matting.state_dict())
    paths = {"trimap": tmp_path / "stn.pth", "matting": tmp_path / "matting.pth"}
    torch.save(stn, paths["trimap"])
    torch.save(matting, paths["matting"])
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "module_prefix", "both"],
)
def test_two_part_checkpoint_round_trip(tmp_path, wrap):
    source, target = tiny_model(2), tiny_model(3)
    x = image(1, 64, seed=6)
    with torch.no_grad():
        expected = source(x)
        assert not torch.allclose(target(x)["alpha"], expected["alpha"])
    paths = save_parts(source, tmp_path, wrap)
    torch.manual_seed(3)
    loaded = create_model(TINY, checkpoint=paths)
    with torch.no_grad():
        got = loaded(x)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert set(loaded.checkpoint_sha256) == {"trimap", "matting"}


def test_stn_part_alone_loads_into_the_semantic_stage(tmp_path):
    source = tiny_model(4)
    path = tmp_path / "u2net_3class.pth"
    torch.save(to_layout(source.stn, u2net_layout(3)), path)
    model = create_model(TINY, checkpoint={"trimap": str(path)})
    x = image(2, 64, seed=7)
    with torch.no_grad():
        assert torch.equal(model.stages()["semantic"].module(x)[1], source.stages()["semantic"].module(x)[1])


def test_single_native_file_loads_the_whole_model(tmp_path):
    source = tiny_model(5)
    path = tmp_path / "salient_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    loaded = create_model(TINY, checkpoint=path)
    x = image(1, 64, seed=8)
    with torch.no_grad():
        assert torch.equal(loaded(x)["alpha"], source(x)["alpha"])
    assert isinstance(loaded.checkpoint_sha256, str)


def test_bad_checkpoints_raise(tmp_path):
    source = tiny_model(6)
    stn = to_layout(source.stn, u2net_layout(3))

    missing = dict(stn)
    del missing["stage3.rebnconv2.conv_s1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): stage3.rebnconv2.conv_s1.weight"):
        create_model(TINY, checkpoint={"trimap": tmp_path / "missing.pth"})

    wrong = dict(stn)
    wrong["side2.weight"] = torch.zeros(3, 9, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"side2.weight: checkpoint \(3, 9, 3, 3\)"):
        create_model(TINY, checkpoint={"trimap": tmp_path / "wrong.pth"})

    # the parts swapped: the matting network's file given as the trimap network
    torch.save(source.matting.state_dict(), tmp_path / "matting.pth")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        create_model(TINY, checkpoint={"trimap": tmp_path / "matting.pth"})

    # the tiny STN into the full-width model
    torch.save(stn, tmp_path / "tiny_stn.pth")
    with pytest.raises(CheckpointError, match="shape differences"):
        create_model("salient", checkpoint={"trimap": tmp_path / "tiny_stn.pth"})

    with pytest.raises(CheckpointError, match="no checkpoint part alpha; its parts are: trimap, matting"):
        create_model(TINY, checkpoint={"alpha": tmp_path / "tiny_stn.pth"})

    # a whole-model file of another model
    other = {"encoder.weight": torch.zeros(3), "decoder.bias": torch.zeros(1)}
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not fit model 'salient_tiny'"):
        create_model(TINY, checkpoint=tmp_path / "other.pth")
