"""AlphaNet: attention pooling ops, the erosion/dilation trimap layer against scipy, the stage
contract, parameter counts and native checkpoints.

The authors published no code or weights, so there is no parity test against their network:
the ED layer is checked against a NumPy/scipy reference and the attention ops against an
independent window-softmax formulation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.errors import CheckpointError, InputError
from mattrt.models import alphanet as an
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.backbones import resnet18

TINY = "alphanet_tiny"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model(TINY)


def _image(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- attention-guided pooling / unpooling ------------------------------------------------------
def _pool_by_window_softmax(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The spec written differently: gather each 2x2 window into a channel axis, softmax there."""
    n, c, h, w = x.shape
    windows = F.pixel_unshuffle(x, 2).reshape(n, c, 4, h // 2, w // 2)
    weights = torch.softmax(F.pixel_unshuffle(torch.sigmoid(a), 2), dim=1)  # N x 4 x H/2 x W/2
    return (windows * weights[:, None]).sum(dim=2)


def test_attention_pool_is_a_window_softmax_weighted_sum():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, 12, generator=gen, dtype=torch.float64)
    a = 4 * torch.randn(2, 1, 8, 12, generator=gen, dtype=torch.float64)
    out = an.attention_pool2d(x, a)
    assert out.shape == (2, 5, 4, 6)
    torch.testing.assert_close(out, _pool_by_window_softmax(x, a), rtol=1e-12, atol=1e-12)
    # one explicit window: n=1, c=3, output (2, 4) reads rows 4-5, columns 8-9
    w = torch.softmax(torch.sigmoid(a[1, 0, 4:6, 8:10]).flatten(), 0)
    assert torch.isclose(out[1, 3, 2, 4], (w * x[1, 3, 4:6, 8:10].flatten()).sum())


def test_attention_pool_with_uniform_attention_is_average_pooling():
    x = torch.randn(1, 3, 6, 4)
    torch.testing.assert_close(an.attention_pool2d(x, torch.full((1, 1, 6, 4), 2.5)), F.avg_pool2d(x, 2))


def test_attention_unpool_scales_the_nearest_upsampling_by_sigmoid():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(2, 4, 3, 5, generator=gen)
    a = torch.randn(2, 1, 6, 10, generator=gen)
    expected = torch.sigmoid(a) * y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(an.attention_unpool2d(y, a), expected)


@pytest.mark.parametrize(
    "op, x_shape, a_shape, message",
    [
        (an.attention_pool2d, (1, 4, 6, 6), (1, 2, 6, 6), "N x 1 x H x W"),
        (an.attention_pool2d, (1, 4, 5, 6), (1, 1, 5, 6), "must be even"),
        (an.attention_pool2d, (1, 4, 6, 6), (1, 1, 8, 8), "must be the same as"),
        (an.attention_unpool2d, (1, 4, 6, 6), (1, 1, 6, 6), "must be half of"),
        (an.attention_unpool2d, (4, 6, 6), (1, 1, 12, 12), "N x C x H x W"),
    ],
)
def test_attention_ops_reject_mismatched_shapes(op, x_shape, a_shape, message):
    with pytest.raises(InputError, match=message):
        op(torch.zeros(x_shape), torch.zeros(a_shape))


def test_attention_module_recomposes_four_branches_by_pixel_shuffle():
    torch.manual_seed(3)
    module = an.AttentionModule(8).eval()
    x = torch.randn(2, 8, 10, 6)
    logits = module(x)
    assert logits.shape == (2, 1, 10, 6)
    # branch k fills window position (k // 2, k % 2)
    for k, branch in enumerate(module.branches):
        torch.testing.assert_close(logits[:, :, k // 2 :: 2, k % 2 :: 2], branch(x))
    assert module.branches[0].conv.groups == 2 and module.branches[0].conv.out_channels == 16
    assert module.branches[0].conv.kernel_size == (4, 4) and module.branches[0].conv.stride == (2, 2)


# -- erosion / dilation layer --------------------------------------------------------------------
def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Ellipses, sparse noise, dense noise and rectangles, plus empty, full and one-pixel masks."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), np.float32)
    for i in range(3, n):
        kind = i % 4
        if kind == 0:
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, h / 2), rng.uniform(2, w / 2)
            masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        elif kind == 1:
            masks[i] = rng.random((h, w)) < 0.02
        elif kind == 2:
            masks[i] = rng.random((h, w)) < 0.6
        else:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[i, y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = 1
    masks[1] = 1
    masks[2, 5, 7] = 1
    return masks


@pytest.mark.parametrize(
    "h, w, erosion, dilation, max_radius",
    [(64, 64, 5.0, 5.0, 8), (48, 80, 10.0, 3.0, 16), (64, 32, 50.0, 80.0, 13), (32, 32, 2.5, 7.5, 0)],
)
def test_ed_layer_matches_the_scipy_reference(h, w, erosion, dilation, max_radius):
    rng = np.random.default_rng(h * w + max_radius)
    masks = _random_masks(rng, 10, h, w)
    expected, radii = an.erosion_dilation_reference(masks, erosion, dilation, max_radius)
    layer = an.ErosionDilationTrimap(0.5, erosion, dilation, max_radius)
    # probabilities on either side of the threshold, not exactly 0/1
    probability = torch.from_numpy(masks)[:, None] * 0.8 + 0.1
    trimap = layer(probability)
    np.testing.assert_array_equal(trimap.numpy(), expected)
    r_erode, r_dilate = an.trimap_radii(torch.from_numpy(masks)[:, None], erosion, dilation, max_radius)
    np.testing.assert_array_equal(np.stack([r_erode.numpy(), r_dilate.numpy()], 1), radii)
    # the cases are not degenerate: radii differ across the batch and reach the cap where asked
    if max_radius:
        assert len(set(radii[:, 1].tolist())) > 2
    assert radii.max() <= max_radius


def test_ed_radii_follow_the_bounding_box():
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 10:31, 5:46] = 1  # height 30 - 10 = 20, width 45 - 5 = 40, mean 30
    r_erode, r_dilate = an.trimap_radii(mask, 10.0, 20.0, 32)
    assert (r_erode.item(), r_dilate.item()) == (3.0, 6.0)
    assert an.trimap_radii(mask, 10.0, 200.0, 32)[1].item() == 32.0  # 60 px capped at max_radius


def test_ed_layer_gives_all_background_for_an_empty_mask():
    layer = an.ErosionDilationTrimap(0.5, 5.0, 5.0, 16)
    trimap = layer(torch.full((2, 1, 32, 32), 0.2))
    assert torch.isfinite(trimap).all()
    assert torch.equal(trimap[:, 0], torch.ones(2, 32, 32)) and trimap[:, 1:].abs().sum() == 0


def test_ed_layer_applies_each_images_own_radius():
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, 20:40, 20:40] = 1  # small square: radius 1 at 5 %
    masks[1, 0, 4:60, 4:60] = 1  # large square: radius 3 at 5 %
    trimap = an.ErosionDilationTrimap(0.5, 5.0, 5.0, 8)(masks)
    unknown_rows = trimap[:, 1, :, 30].sum(dim=1)  # band crossed twice, 2r on each side
    assert unknown_rows.tolist() == [4.0, 12.0]


# -- stages and forward --------------------------------------------------------------------------
def test_registered_with_a_tiny_variant():
    assert {"alphanet", TINY} <= set(list_models())
    settings = get_settings(TINY)
    assert settings.variant_of == "alphanet" and settings.fusion == "argmax_trimap"
    assert settings.semantic_size % settings.stride_multiple == 0 and settings.tile_size % settings.stride_multiple == 0
    full = get_settings("alphanet")
    assert (full.stride_multiple, full.semantic_size, full.tile_size) == (32, 512, 512)


@pytest.mark.parametrize("batch", [1, 2])
def test_stage_shapes_and_ranges(tiny, batch):
    stages = tiny.stages()
    assert list(stages) == list(tiny.settings.stages)
    semantic = stages["semantic"]
    assert semantic.input_names == ["image"] and semantic.output_names == ["semantic", "trimap"]
    (image,) = semantic.example_inputs(batch, torch.Generator().manual_seed(batch))
    with torch.no_grad():
        probability, trimap = semantic.module(image)
    size = tiny.settings.semantic_size
    assert probability.shape == (batch, 1, size, size) and trimap.shape == (batch, 3, size, size)
    assert probability.min() >= 0 and probability.max() <= 1
    assert torch.equal(trimap.sum(dim=1), torch.ones(batch, size, size))
    assert set(trimap.unique().tolist()) <= {0.0, 1.0}

    detail = stages["detail"]
    assert detail.input_names == ["image", "guidance"] and detail.output_names == ["detail"]
    image, guidance = detail.example_inputs(batch, torch.Generator().manual_seed(10 + batch))
    with torch.no_grad():
        (alpha,) = detail.module(image, guidance)
    size = tiny.settings.tile_size
    assert alpha.shape == (batch, 1, size, size) and alpha.min() >= 0 and alpha.max() <= 1


def test_fusion_keeps_the_trimap_outside_the_unknown_band(tiny):
    with torch.no_grad():
        out = tiny(_image(1, 64, 64, seed=5))
    background, unknown, foreground = (out["trimap"][:, i : i + 1] > 0.5 for i in range(3))
    alpha, detail = out["alpha"], out["detail"]
    assert torch.equal(alpha[unknown], detail[unknown])
    assert (alpha[foreground] == 1).all() and (alpha[background] == 0).all()


def test_detail_stage_reads_the_trimap_as_one_channel(tiny):
    """0.5 * unknown + foreground: one-hot and soft guidance with the same value agree."""
    detail = tiny.stages()["detail"].module
    image = _image(1, 64, 64, seed=6)
    one_hot = torch.zeros(1, 3, 64, 64)
    one_hot[:, 1] = 1  # all unknown -> 0.5
    soft = torch.zeros(1, 3, 64, 64)
    soft[:, 0], soft[:, 2] = 0.5, 0.5  # half background, half foreground -> 0.5
    with torch.no_grad():
        assert torch.allclose(detail(image, one_hot)[0], detail(image, soft)[0])
        all_foreground = torch.zeros(1, 3, 64, 64)
        all_foreground[:, 2] = 1
        assert not torch.allclose(detail(image, one_hot)[0], detail(image, all_foreground)[0])


def test_detail_stage_rejects_guidance_that_is_not_three_trimap_probabilities(tiny):
    with pytest.raises(InputError, match="guidance must be N x 3 x H x W"):
        tiny.stages()["detail"].module(_image(1, 64, 64), torch.zeros(1, 1, 64, 64))


def test_bad_settings_are_rejected():
    with pytest.raises(InputError, match="max_radius"):
        create_model(TINY, max_radius=-1)
    with pytest.raises(InputError, match="erosion_percent"):
        create_model(TINY, erosion_percent=150.0)
    with pytest.raises(InputError, match="tile_size"):
        create_model(TINY, tile_size=80)


# -- parameter counts -----------------------------------------------------------------------------
def test_full_model_parameter_counts():
    model = create_model("alphanet")
    # Semantic stage, counted from the layer table (DeepLabV3+, Chen et al. 2018, ResNet-18):
    # ResNet-18 without fc: 11,689,512 (torchvision total) - 513,000 (fc) = 11,176,512
    # ASPP 512 -> 256: 1x1 131,072 + three 3x3 3 * 1,179,648 + pooling 1x1 131,072
    #   + projection 1280 -> 256 327,680 + 6 BN * 512 = 4,131,840
    # decoder: 64 -> 48 1x1 3,072 + BN 96; 304 -> 256 3x3 700,416 + 512; 256 -> 256 3x3
    #   589,824 + 512; classifier 256 + 1 = 1,294,689
    semantic = 11_176_512 + 4_131_840 + 1_294_689  # 16,603,041
    # Detail stage: MobileNetV2 features (torchvision 2,223,872) without features.18
    # (320 -> 1280 conv + BN: 412,160) and with a 4th input channel (+32 * 9) = 1,812,000;
    # attention modules: 4 branches of 16C^2 (group conv) + 4C (GN) + 2C^2 + C + C + 1
    #   = 18C^2 + 6C + 1, for C = 32, 24, 32, 64, 160: 4 * 583,637 = 2,334,548;
    # bottleneck 320 -> 160 + BN: 51,520; decoders (5x5 + BN) in -> out: 320->96, 192->64,
    #   128->32, 64->24, 48->16, 32->32, 64->32: 1,312,592; head 3x3 32 -> 1 + bias: 289
    detail = 1_812_000 + 2_334_548 + 51_520 + 1_312_592 + 289  # 5,510,949
    assert model.stage_parameters() == {"semantic": semantic, "detail": detail}
    assert model.num_parameters() == semantic + detail
    matting = model.matting
    assert sum(p.numel() for n, p in matting.named_parameters() if n.startswith("attention")) == 2_334_548


def test_full_model_key_structure():
    """The documented native layout: top-level modules and a handful of exact keys."""
    state = create_model("alphanet").state_dict()
    assert {k.split(".")[0] for k in state} == {"segmentation", "matting"}
    assert len(state) == 672
    assert sum(k.endswith("num_batches_tracked") for k in state) == 88
    for key, shape in {
        "segmentation.backbone.layer4.1.conv2.weight": (512, 512, 3, 3),
        "segmentation.aspp.atrous.2.0.weight": (256, 512, 3, 3),
        "segmentation.aspp.image_pool.0.weight": (256, 512, 1, 1),
        "segmentation.decoder.fuse.0.weight": (256, 304, 3, 3),
        "segmentation.decoder.classifier.bias": (1,),
        "matting.layer0.0.weight": (32, 4, 3, 3),
        "matting.layer7.0.conv.2.weight": (320, 960, 1, 1),
        "matting.attention6.branches.3.conv.weight": (320, 80, 4, 4),
        "matting.attention0.branches.0.norm.weight": (64,),
        "matting.decoder6.0.weight": (96, 320, 5, 5),
        "matting.head.weight": (1, 32, 3, 3),
    }.items():
        assert tuple(state[key].shape) == shape, key
    # layer4 keeps the resolution with dilation 2 (output stride 16), first block dilation 1
    backbone = create_model("alphanet").segmentation.backbone
    assert backbone.layer4[0].conv1.stride == (1, 1) and backbone.layer4[1].conv1.dilation == (2, 2)


# -- checkpoints ----------------------------------------------------------------------------------
def test_bad_checkpoints_raise(tiny, tmp_path):
    state = tiny.state_dict()
    missing = dict(state)
    del missing["matting.attention2.branches.1.score.weight"]
    wrong_shape = dict(state)
    classifier = "segmentation.decoder.classifier.weight"
    wrong_shape[classifier] = torch.zeros(2, *state[classifier].shape[1:])  # a 2-class head
    cases = {
        "missing": (missing, "missing keys"),
        "shape": (wrong_shape, "shape differences"),
        "other": (resnet18().state_dict(), "does not fit model"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=message):
            create_model(TINY, checkpoint=path)
    # the full model's weights do not fit the tiny variant
    path = tmp_path / "full.pth"
    torch.save(create_model("alphanet").state_dict(), path)
    with pytest.raises(CheckpointError, match="shape differences"):
        create_model(TINY, checkpoint=path)


# -- export of the data-dependent ED layer --------------------------------------------------------
def test_ed_layer_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    layer = an.ErosionDilationTrimap(0.5, 8.0, 12.0, 8).eval()
    masks = torch.from_numpy(_random_masks(np.random.default_rng(9), 6, 32, 32))[:, None]
    program = torch.onnx.export(
        layer,
        (masks[:2],),
        dynamo=True,
        input_names=["semantic"],
        output_names=["trimap"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    path = tmp_path / "ed.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"semantic": masks.numpy()})
    expected, radii = an.erosion_dilation_reference(masks[:, 0].numpy(), 8.0, 12.0, 8)
    assert len(set(radii[:, 1].tolist())) > 2  # several radii in one batch
    np.testing.assert_array_equal(got, expected)
