"""Train a matting model on synthetic data generated on the fly (AIM's losses).

    python -m mattrt.training.train --model aim_synthetic --out models/aim_synthetic.pt \
        --steps 700 --batch 4 --crop 192 --seed 0 --log /tmp/aim_synthetic.log \
        --report benchmarks/results/aim_synthetic_training.json \
        --curve benchmarks/results/aim_synthetic_loss.png

Data: sample i of the run is `generate_sample(KINDS[i % 3], (s, s), sample_rng(seed, i))` with
its side s drawn from --sizes, then a random crop of --crop pixels and a horizontal flip with
probability 1/2, all drawn from the sample's own generator: the batch of step k depends on
(seed, k) only, so a run is reproducible and any step's data can be regenerated.

Semantic target: AIM's unified semantic representation (paper eq. 1), derived from the ground
truth alpha: the traditional trimap T (transition band = pixels within --band of a
0 < alpha < 1 pixel, dilated by a square window), then per image type
- salient opaque: U = T (a trimap);
- salient transparent / meticulous: U = 1.5 T - T^2, i.e. the foreground joins the transition
  area (a duomap: background and transition);
- non-salient: U = 0.5 everywhere (a unimap: all transition).
Classes are (background, transition, foreground) = U in (0, 0.5, 1).

Losses (weights 1):
- cross-entropy of the semantic stage's trimap probabilities (the sigmoid scores normalised to
  sum 1, exactly what the runtime reads) against the unified classes;
- on the raw matting output M, inside the transition area of U: alpha loss (Charbonnier L1,
  Deep Image Matting) and Laplacian-pyramid loss (Hou and Liu 2019; 5 levels, weight 2^level);
- on the fused alpha of the paper's eq. (2) (fusion "aim_soft", differentiable in both
  branches), over the whole image: alpha, Laplacian and composition loss (the composite of the
  predicted alpha with the sample's exact foreground and background against the image).

The log is one JSON object per step (losses, learning rate, seconds); --report writes the run's
record (command, seed, steps, wall time, final losses, held-out metrics of the trained and the
untrained network on synthetic samples of another seed, checkpoint sha256).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mattrt.charts import line_chart, save_png
from mattrt.data.synthetic import (
    KINDS,
    default_trimap_radius,
    generate_sample,
    make_trimap,
    sample_rng,
)
from mattrt.errors import InputError
from mattrt.metrics import evaluate, mean_metrics
from mattrt.models import create_model, get_settings
from mattrt.models.checkpoints import file_sha256
from mattrt.models.fusion import aim_soft

KIND_NAMES = ("salient_opaque", "salient_transparent", "non_salient")
BACKGROUND, TRANSITION, FOREGROUND = 0, 1, 2
DEFAULT_SIZES = (224, 448)
DEFAULT_CROP = 192
DEFAULT_BAND = 0.02  # transition band half-width as a fraction of the sample's side
HELD_OUT_SEED = 2
HELD_OUT_COUNT = 30
HELD_OUT_SIZE = 320
LAPLACIAN_LEVELS = 5


# -- targets -----------------------------------------------------------------------------------
def unified_classes(alpha: np.ndarray, kind: str, band: int) -> np.ndarray:
    """H x W int64 classes of AIM's unified semantic representation for one image type."""

    if kind not in KIND_NAMES:
        raise InputError(f"unknown image type {kind!r}; expected one of {', '.join(KIND_NAMES)}")
    trimap = make_trimap(alpha, band)
    classes = np.where(trimap == 255, FOREGROUND, np.where(trimap == 128, TRANSITION, BACKGROUND))
    if kind == "salient_transparent":
        classes = np.where(classes == FOREGROUND, TRANSITION, classes)
    elif kind == "non_salient":
        classes = np.full_like(classes, TRANSITION)
    return classes.astype(np.int64)


@dataclass
class Batch:
    image: torch.Tensor  # N x 3 x H x W, normalised as the model expects
    rgb: torch.Tensor  # N x 3 x H x W in [0, 1] (composition loss)
    fg: torch.Tensor
    bg: torch.Tensor
    alpha: torch.Tensor  # N x 1 x H x W
    classes: torch.Tensor  # N x H x W int64


def training_sample(seed: int, index: int, crop: int, sizes: Sequence[int], band_fraction: float):
    """(image, fg, bg as uint8 crops, alpha crop, class crop) of sample `index` of a run."""

    rng = sample_rng(seed, index)
    low, high = sizes
    side = int(rng.integers(max(low, crop), max(high, crop) + 1))
    kind = KIND_NAMES[index % len(KIND_NAMES)]
    sample = generate_sample(kind, (side, side), rng)
    classes = unified_classes(sample.alpha, kind, max(1, round(band_fraction * side)))
    top = int(rng.integers(0, side - crop + 1))
    left = int(rng.integers(0, side - crop + 1))
    flip = bool(rng.integers(0, 2))
    window = (slice(top, top + crop), slice(left, left + crop))
    arrays = [sample.image[window], sample.fg[window], sample.bg[window], sample.alpha[window], classes[window]]
    if flip:
        arrays = [a[:, ::-1] for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def make_batch(seed: int, step: int, batch: int, crop: int, sizes: Sequence[int], band_fraction: float,
               mean: Sequence[float], std: Sequence[float]) -> Batch:
    items = [training_sample(seed, step * batch + i, crop, sizes, band_fraction) for i in range(batch)]

    def colour(arrays):
        return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()

    rgb = colour([it[0] for it in items])
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return Batch(
        image=(rgb - mean_t) / std_t,
        rgb=rgb,
        fg=colour([it[1] for it in items]),
        bg=colour([it[2] for it in items]),
        alpha=torch.from_numpy(np.stack([it[3] for it in items]))[:, None].float(),
        classes=torch.from_numpy(np.stack([it[4] for it in items])),
    )


# -- losses ------------------------------------------------------------------------------------
def _gaussian_kernel(channels: int) -> torch.Tensor:
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    return torch.outer(taps, taps).expand(channels, 1, 5, 5).contiguous()


def laplacian_pyramid(x: torch.Tensor, levels: int = LAPLACIAN_LEVELS) -> list[torch.Tensor]:
    """Band-pass levels x_k - blur(x_k), with x_{k+1} = blur(x_k) subsampled by 2."""
    kernel = _gaussian_kernel(x.shape[1]).to(x)
    bands = []
    current = x
    for _ in range(levels):
        blurred = F.conv2d(F.pad(current, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])
        bands.append(current - blurred)
        current = blurred[:, :, ::2, ::2]
        if min(current.shape[-2:]) < 3:
            break
    return bands


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sum((2.0**k) * (p - t).abs().mean()
               for k, (p, t) in enumerate(zip(laplacian_pyramid(pred), laplacian_pyramid(target))))


def charbonnier(diff: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    value = torch.sqrt(diff * diff + 1e-12)
    if weight is None:
        return value.mean()
    return (value * weight).sum() / weight.sum().clamp_min(1.0)


def matting_losses(outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """The loss terms (see the module docstring) and their sum under "total"."""

    trimap = outputs["trimap"]
    detail = outputs["detail"]
    log_probs = torch.log(trimap.clamp_min(1e-6))
    transition = (batch.classes == TRANSITION).float()[:, None]
    fused = aim_soft(trimap, detail)
    composite = fused * batch.fg + (1.0 - fused) * batch.bg
    terms = {
        "semantic_ce": F.nll_loss(log_probs, batch.classes),
        "detail_alpha": charbonnier(detail - batch.alpha, transition),
        "detail_laplacian": laplacian_loss(detail * transition, batch.alpha * transition),
        "fused_alpha": charbonnier(fused - batch.alpha),
        "fused_laplacian": laplacian_loss(fused, batch.alpha),
        "fused_composition": charbonnier(composite - batch.rgb),
    }
    terms["total"] = sum(terms.values())
    return terms


# -- evaluation --------------------------------------------------------------------------------
def held_out_samples(seed: int = HELD_OUT_SEED, count: int = HELD_OUT_COUNT, size: int = HELD_OUT_SIZE):
    """Synthetic samples of `seed` (cycling through the three types) at size x size."""

    return [generate_sample(KINDS[i % len(KINDS)], (size, size), sample_rng(seed, i)) for i in range(count)]


@torch.no_grad()
def evaluate_model(model, samples, band_fraction: float = DEFAULT_BAND) -> dict[str, float]:
    """Mean matting metrics of the model's fused alpha (whole-image forward in eval mode) against
    the ground truth, whole image and unknown band (trimap of default radius), plus the semantic
    accuracy against the unified classes."""

    was_training = model.training
    model.eval()
    settings = model.settings
    mean = torch.tensor(settings.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(settings.std, dtype=torch.float32)[None, :, None, None]
    rows, correct, pixels = [], 0, 0
    try:
        for sample in samples:
            rgb = torch.from_numpy(sample.image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            out = model((rgb - mean) / std)
            alpha = out["alpha"][0, 0].clamp(0, 1).numpy()
            trimap = make_trimap(sample.alpha, default_trimap_radius(sample.size))
            rows.append(evaluate(alpha, sample.alpha, trimap))
            side = min(sample.size)
            classes = unified_classes(sample.alpha, sample.kind, max(1, round(band_fraction * side)))
            predicted = out["trimap"][0].argmax(0).numpy()
            correct += int((predicted == classes).sum())
            pixels += classes.size
    finally:
        model.train(was_training)
    means = mean_metrics(rows)
    keys = ("sad", "mse", "grad", "conn", "sad_trimap", "mse_trimap", "grad_trimap", "conn_trimap")
    result = {k: float(means[k]) for k in keys if k in means}
    result["semantic_accuracy"] = correct / max(pixels, 1)
    return result


# -- training ----------------------------------------------------------------------------------
def build_untrained(name: str, seed: int):
    torch.manual_seed(seed)
    settings = get_settings(name)
    overrides = {"default_checkpoint": None} if hasattr(settings, "default_checkpoint") else {}
    return create_model(name, **overrides)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _atomic_save(state: dict, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def train(model_name: str, out: Path, *, steps: int, batch: int = 4, crop: int = DEFAULT_CROP,
          sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0, lr: float = 1e-3, warmup: int = 20,
          band_fraction: float = DEFAULT_BAND, threads: int | None = None, log: Path | None = None,
          progress: bool = True) -> dict:
    """Train from scratch and save the state_dict to `out`; returns a summary of the run."""


    if steps < 1 or batch < 1:
        raise InputError(f"steps and batch must be >= 1, got {steps} and {batch}")
    if crop <= 0 or sizes[0] > sizes[1]:
        raise InputError(f"crop must be positive and sizes low <= high, got crop {crop}, sizes {sizes}")
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: the folder {out.parent} does not exist")
    if threads:
        torch.set_num_threads(int(threads))
    model = build_untrained(model_name, seed)
    stride = model.settings.stride_multiple
    if crop % stride:
        raise InputError(f"crop {crop} must be a multiple of {model_name}'s stride multiple {stride}")
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict] = []
    log_file = open(log, "w") if log else None
    started = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc=f"train {model_name}", dynamic_ncols=True)
    try:
        for step in bar:
            step_started = time.perf_counter()
            rate = learning_rate(step, steps, lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = rate
            data = make_batch(seed, step, batch, crop, sizes, band_fraction, model.settings.mean, model.settings.std)
            outputs = model(data.image)
            terms = matting_losses(outputs, data)
            if not torch.isfinite(terms["total"]):
                raise RuntimeError(f"training diverged at step {step}: loss {terms['total'].item()}")
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            record = {"step": step, "lr": rate, **{k: float(v.detach()) for k, v in terms.items()},
                      "seconds": round(time.perf_counter() - step_started, 3)}
            history.append(record)
            if log_file:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix(loss=f"{record['total']:.3f}", ce=f"{record['semantic_ce']:.3f}")
    finally:
        bar.close()
        if log_file:
            log_file.close()
    wall = time.perf_counter() - started
    model.eval()
    _atomic_save(model.state_dict(), out)
    tail = history[-min(50, len(history)):]
    return {
        "model": model_name,
        "checkpoint": str(out),
        "checkpoint_sha256": file_sha256(out),
        "checkpoint_bytes": out.stat().st_size,
        "parameters": model.num_parameters(),
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "crop": crop,
        "sample_sizes": list(sizes),
        "band_fraction": band_fraction,
        "lr": lr,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 1),
        "first_losses": {k: v for k, v in history[0].items() if k not in ("step", "seconds")},
        "final_losses_mean_last_50": {k: float(np.mean([h[k] for h in tail])) for k in history[0]
                                      if k not in ("step", "seconds", "lr")},
        "history": history,
    }


def loss_curve(history: Sequence[dict], path: Path, title: str) -> Path:
    """PNG of the loss terms over the steps (moving average over 20 steps, log y)."""

    keys = [k for k in history[0] if k not in ("step", "seconds", "lr")]
    steps = np.array([h["step"] for h in history], dtype=np.float64)
    window = max(1, min(50, len(history) // 20))
    series = {}
    for key in keys:
        values = np.array([h[key] for h in history], dtype=np.float64)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        series[key] = (steps[window - 1:], smooth)
    return save_png(line_chart(series, title=title, x_label="step", y_label=f"loss ({window}-step mean)", log_y=True), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mattrt.training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="registered model name (e.g. aim_synthetic)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint file to write (state_dict)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=DEFAULT_CROP)
    parser.add_argument("--sizes", default=f"{DEFAULT_SIZES[0]}-{DEFAULT_SIZES[1]}",
                        help="range of the generated samples' side, LOW-HIGH pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--band", type=float, default=DEFAULT_BAND,
                        help="transition band half-width as a fraction of the sample side")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log", type=Path, default=None, help="JSON-lines log of the per-step losses")
    parser.add_argument("--report", type=Path, default=None, help="JSON record of the run and held-out metrics")
    parser.add_argument("--curve", type=Path, default=None, help="PNG of the loss curve")
    parser.add_argument("--eval-count", type=int, default=HELD_OUT_COUNT)
    parser.add_argument("--eval-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        low, high = (int(v) for v in args.sizes.split("-"))
    except ValueError:
        parser.error(f"--sizes must be LOW-HIGH (e.g. 224-448), got {args.sizes!r}")
    if args.eval_seed == args.seed:
        parser.error("--eval-seed must differ from --seed (held-out samples)")
    summary = train(args.model, args.out, steps=args.steps, batch=args.batch, crop=args.crop, sizes=(low, high),
                    seed=args.seed, lr=args.lr, band_fraction=args.band, threads=args.threads, log=args.log,
                    progress=not args.no_progress)
    print(f"saved {args.out} ({summary['checkpoint_bytes']} bytes, sha256 {summary['checkpoint_sha256']}) "
          f"after {summary['wall_seconds']} s")
    if args.curve:
        loss_curve(summary["history"], args.curve, f"{args.model}: training losses (seed {args.seed})")
        print(f"wrote {args.curve}")
    if args.report:
        samples = held_out_samples(args.eval_seed, args.eval_count)
        trained = build_untrained(args.model, args.seed)
        trained.load_weights(args.out)
        untrained = build_untrained(args.model, args.seed)
        record = {k: v for k, v in summary.items() if k != "history"}
        record.update({
            "command": "python -m mattrt.training.train " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
            "held_out": {
                "data": f"calibration.synthetic seed {args.eval_seed}, {args.eval_count} samples of "
                        f"{HELD_OUT_SIZE}x{HELD_OUT_SIZE} cycling through the three types",
                "protocol": "whole-image forward in eval mode, fused alpha (the model's fusion), "
                            "calibration.metrics.evaluate; *_trimap over the unknown band of a "
                            "default-radius trimap; sad/grad/conn divided by 1000",
                "trained": evaluate_model(trained, samples, args.band),
                "untrained_same_width_same_init_seed": evaluate_model(untrained, samples, args.band),
            },
            "loss_curve": str(args.curve) if args.curve else None,
        })
        args.report.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.report}")
        print(json.dumps(record["held_out"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
