"""The synthetic-domain AIM (models/aim_synthetic.py) and its trainer (training/train.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mattrt.models.aim_synthetic as aim_synthetic
from mattrt.errors import CheckpointError, InputError
from mattrt.models import create_model, get_settings
from mattrt.training import train


def test_unified_classes_follow_the_image_type():
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    alpha[8:24, 8] = 0.5  # a soft edge
    trimap = train.unified_classes(alpha, "salient_opaque", band=1)
    assert set(np.unique(trimap)) == {train.BACKGROUND, train.TRANSITION, train.FOREGROUND}
    duomap = train.unified_classes(alpha, "salient_transparent", band=1)
    assert train.FOREGROUND not in duomap and (duomap == train.TRANSITION).sum() > (trimap == train.TRANSITION).sum()
    assert (duomap == train.BACKGROUND).sum() == (trimap == train.BACKGROUND).sum()
    unimap = train.unified_classes(alpha, "non_salient", band=1)
    assert (unimap == train.TRANSITION).all()
    with pytest.raises(InputError):
        train.unified_classes(alpha, "portrait", band=1)


def test_batches_are_reproducible_and_consistent():
    settings = get_settings("aim_tiny")
    first = train.make_batch(0, 3, 2, 64, (72, 96), 0.02, settings.mean, settings.std)
    again = train.make_batch(0, 3, 2, 64, (72, 96), 0.02, settings.mean, settings.std)
    other = train.make_batch(0, 4, 2, 64, (72, 96), 0.02, settings.mean, settings.std)
    assert torch.equal(first.image, again.image) and torch.equal(first.classes, again.classes)
    assert not torch.equal(first.image, other.image)
    assert first.image.shape == (2, 3, 64, 64) and first.classes.shape == (2, 64, 64)
    # crops and flips are applied to image, foreground, background and alpha alike
    composite = first.alpha * first.fg + (1 - first.alpha) * first.bg
    assert float((composite - first.rgb).abs().max()) <= 1.0 / 255 + 1e-6


def test_laplacian_loss_sees_detail_only():
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(train.laplacian_loss(x, x)) == 0.0
    assert float(train.laplacian_loss(x + 0.3, x)) < 1e-5  # a constant offset has no band-pass content
    assert float(train.laplacian_loss(x.flip(-1), x)) > 0.01


def test_training_steps_write_a_strict_checkpoint(tmp_path):
    out = tmp_path / "tiny.pt"
    log = tmp_path / "log.jsonl"
    summary = train.train("aim_tiny", out, steps=2, batch=1, crop=64, sizes=(64, 96), seed=5, log=log, progress=False)
    assert summary["steps"] == 2 and len(summary["history"]) == 2
    assert all(np.isfinite(h["total"]) for h in summary["history"])
    assert len(log.read_text().splitlines()) == 2
    model = create_model("aim_tiny", checkpoint=out)
    assert model.checkpoint_sha256 == summary["checkpoint_sha256"]
    with pytest.raises(InputError, match="multiple of"):
        train.train("aim_tiny", tmp_path / "x.pt", steps=1, crop=48, progress=False)


def test_aim_synthetic_loads_its_committed_checkpoint():
    settings = get_settings("aim_synthetic")
    assert settings.variant_of == "aim" and settings.width == 0.2
    assert "synthetic" in settings.description and "not for real photos" in settings.description
    path = aim_synthetic.checkpoint_path()
    assert path.is_file() and path.stat().st_size <= 10 * 1024 * 1024
    model = create_model("aim_synthetic")
    assert aim_synthetic.CHECKPOINT_SHA256 is not None
    assert model.checkpoint_sha256 == aim_synthetic.CHECKPOINT_SHA256
    untrained = create_model("aim_synthetic", default_checkpoint=None)
    assert untrained.checkpoint_sha256 is None
    with pytest.raises(CheckpointError, match="missing"):
        create_model("aim_synthetic", default_checkpoint="no_such_file.pt")


def test_aim_synthetic_beats_the_untrained_network_on_held_out_samples():
    samples = train.held_out_samples(seed=train.HELD_OUT_SEED + 40, count=3, size=192)
    trained = train.evaluate_model(create_model("aim_synthetic"), samples)
    torch.manual_seed(0)
    untrained = train.evaluate_model(create_model("aim_synthetic", default_checkpoint=None), samples)
    assert trained["sad"] < 0.8 * untrained["sad"]
    assert trained["mse"] < untrained["mse"]
    assert trained["semantic_accuracy"] > untrained["semantic_accuracy"]
