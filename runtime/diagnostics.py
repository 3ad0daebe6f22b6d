"""Measuring what tiling changes: tiled output against one whole-image detail call.

`tiled_vs_whole(pipeline, image)` runs the pipeline twice on the same image and engines: tiled,
and with the whole padded canvas in one detail call with the same guidance (whole=True). The
semantic pass, guidance and fusion are identical, so every difference comes from what tiles
cannot see across their inner edges. It is zero (to float rounding) when the detail network is
local (no global pooling, SE, PSP, ASPP image pooling or GroupNorm) and the blending margin is
at least its receptive-field radius.

`calibrated_random_weights(model)` exists because such measurements on untrained networks say
nothing: with PyTorch's default initialisation the activations of deep stacks shrink layer
after layer, and e.g. SHM's untrained M-Net returns a constant (std 2e-8), which any tiling
reproduces exactly. It re-draws every convolution and linear weight with variance 2 / fan_in
(He et al.) and sets each BatchNorm's running statistics to those of random stage inputs, so
activations keep unit scale through the whole network, as in a trained one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mattrt.runtime.pipeline import Pipeline


def calibrated_random_weights(model, seed: int = 0, batches: int = 2):
    """Re-initialise `model` in place (see the module docstring); returns it in eval mode."""

    generator = torch.Generator().manual_seed(seed)
    norms = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                norms.append((module, module.momentum))
                module.momentum = None  # cumulative average over the calibration batches
    stages = model.stages()
    try:
        # train() mode draws from torch's global generator (dropout): seeded too, and restored
        # afterwards, so the same seed gives the same weights in every process.
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in model.settings.stages:
                stage = stages[name]
                stage.module.train()
                for _ in range(batches):
                    stage.module(*stage.example_inputs(2, generator))
    finally:
        for module, momentum in norms:
            module.momentum = momentum
        model.eval()
        for stage in model.stages().values():
            stage.module.eval()
    return model


def tiled_vs_whole(pipeline: Pipeline, image: np.ndarray) -> dict:
    """Max abs differences of alpha and of the stitched raw alpha between tiled and whole-image
    runs, with the raw alpha's range for scale and the plan used."""
    tiled = pipeline.run(image, keep_detail=True)
    whole = pipeline.run(image, whole=True, keep_detail=True)
    detail_difference = np.abs(tiled.detail - whole.detail)
    return {
        "alpha_max_abs": float(np.abs(tiled.alpha - whole.alpha).max()),
        "alpha_mean_abs": float(np.abs(tiled.alpha - whole.alpha).mean()),
        "detail_max_abs": float(detail_difference.max()),
        "detail_range": float(np.ptp(whole.detail)),
        "plan": tiled.plan,
    }


__all__ = ["calibrated_random_weights", "tiled_vs_whole"]
