"""aim_synthetic: AIM at 1/5 width, trained by mattrt on synthetic matting data.

A synthetic-domain model, NOT for real photographs. It exists so that the export, FP16/INT8
calibration and fidelity tools run on a network with trained weights (realistic activation
ranges, a trimap that means something) rather than on random weights; the authors' AIM
weights (width 1.0, `aim`) are not redistributable here.

Architecture: the authors' AimNet (models/aim.py) at width 0.2: 2,304,733 parameters, a 9.2 MB
float32 checkpoint committed as models/aim_synthetic.pt and loaded by
`create_model("aim_synthetic")`; `create_model("aim_synthetic", default_checkpoint=None)`
builds the untrained network (training starts from it).

Training (training/train.py; record in benchmarks/results/aim_synthetic_training.json, loss
curve aim_synthetic_loss.png, per-step log aim_synthetic_training_log.jsonl):

    python -m mattrt.training.train --model aim_synthetic --out models/aim_synthetic.pt \
        --steps 1800 --batch 8 --crop 192 --seed 0 --threads 1

- data: calibration.synthetic samples generated on the fly (seed 0, sample index i ->
  sample_rng(0, i), kinds cycling through the three AIM-500 types), 224-448 px squares,
  random 192 px crops and horizontal flips: 14,400 crops in all;
- losses: cross-entropy of the semantic stage's trimap probabilities against AIM's unified
  semantic representation (trimap / duomap / unimap by image type, paper eq. 1), alpha
  (Charbonnier L1) + Laplacian losses of the raw matting output in the transition area, and
  alpha + Laplacian + composition losses of the paper's fused alpha (eq. 2);
- Adam, learning rate 1e-3 with 20 warm-up steps and cosine decay, one CPU thread;
- 2,505 s of wall time on the 2-core CPU machine (shared with other jobs); mean losses of the
  last 50 steps: semantic cross-entropy 0.34 (1.10 at the start), total 1.84 (from 4.4).

Held-out check (30 samples of 320 x 320, synthetic seed 2, whole-image forward, fused alpha,
calibration.metrics; SAD / Grad / Conn in thousands): trained SAD 8.39, MSE 0.036, Grad 10.7,
Conn 7.86, semantic accuracy 0.868 against the unified classes; the untrained network of the same
width and initialisation seed: SAD 39.5, MSE 0.199, Grad 30.6, Conn 40.5, accuracy 0.527.
The sha256 of the committed checkpoint is CHECKPOINT_SHA256 below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mattrt.errors import CheckpointError
from mattrt.models.aim import AimModel, AimSettings
from mattrt.models.registry import register_model

# The committed weights (file name inside the mattrt.models package) and their sha256.
CHECKPOINT_FILE = "aim_synthetic.pt"
CHECKPOINT_SHA256 = "e2e077f312c2f31658dcdfaf8c8aab8fe86300ae71b23ad9e91a2c22be63b341"


def checkpoint_path(file_name: str = CHECKPOINT_FILE) -> Path:
    return Path(__file__).with_name(file_name)


@dataclass(frozen=True)
class AimSyntheticSettings(AimSettings):
    """AIM at width 0.2 with sizes for small synthetic images.

    - semantic_size 256 / tile_size 192 / overlap 32: training crops are 192 px cut from
      224-448 px synthetic squares, so a 192 px tile of a ~400 px image shows the detail stage
      structures at the scales it was trained on, and the 256 canvas shows the semantic stage
      a whole image at a trained scale.
    - default_checkpoint: weights loaded when the model is built (a file name next to this
      module); None builds the untrained network.
    """

    name: str = "aim_synthetic"
    description: str = (
        "AIM at 1/5 width trained by mattrt on synthetic matting data (synthetic-domain model for "
        "calibration and fidelity measurements; not for real photos)"
    )
    width: float = 0.2
    semantic_size: int = 256
    tile_size: int = 192
    tile_overlap: int = 32
    variant_of: str | None = "aim"
    default_checkpoint: str | None = CHECKPOINT_FILE


@register_model(AimSyntheticSettings())
def aim_synthetic(settings: AimSyntheticSettings) -> AimModel:
    model = AimModel(settings)
    if settings.default_checkpoint is not None:
        path = checkpoint_path(settings.default_checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"aim_synthetic: its weights {path} are missing; train them with `python -m "
                "mattrt.training.train --model aim_synthetic --out PATH` or build the untrained "
                "network with create_model('aim_synthetic', default_checkpoint=None)"
            )
        model.load_weights(path)
    return model


__all__ = ["AimSyntheticSettings", "CHECKPOINT_FILE", "CHECKPOINT_SHA256", "checkpoint_path"]
