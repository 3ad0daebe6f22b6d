"""Semantic Image Matting's guidance for its matting network (models/sim.py), as plain functions
any runtime can call with its own classifier backend: the hard trimap, the click maps (their
trimap_to_clks) and the 20 semantic score maps stitched from the patch classifier's class
activation maps over overlapping windows (their extract_semantic_trimap_whole).

Channel order of the guidance: 2 hard-trimap channels, 6 click maps, one score map per class in
MATTING_CLASSES order (`sim_guidance` says more).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mattrt.errors import InputError
from mattrt.models.base import check_image

# The 20 matting classes, in the order of the classifier's outputs (their scripts/main.py).
MATTING_CLASSES = (
    "defocus", "fire", "fur", "glass_ice", "hair_easy", "hair_hard", "insect", "motion", "net",
    "plant_flower", "plant_leaf", "plant_tree", "plastic_bag", "sharp", "smoke_cloud",
    "spider_web", "texture_holed", "texture_smooth", "water_drop", "water_spray",
)
# Their trimap files hold 0 / 128 / 255; the classifier reads trimap / 255.
TRIMAP_LEVELS = (0.0, 128.0, 255.0)
# Guidance channels: 2 hard-trimap channels, 6 click maps, then one score map per class.
TRIMAP_CHANNELS = 2
CLICK_CHANNELS = 6
# Click maps: Gaussians of the distance to the nearest background / foreground pixel with
# these widths, as fractions of the click scale L (their data/util.py trimap_to_clks).
CLICK_SIGMAS = (0.02, 0.08, 0.16)

def classifier_stage_name(window: int) -> str:
    return f"classifier_{window}"


def stages_for(windows: Sequence[int]) -> tuple[str, ...]:
    return ("semantic", *(classifier_stage_name(w) for w in windows), "detail")


ClassifyWindow = Callable[[object, object], object]


def hard_trimap(trimap: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W probabilities -> N x H x W class indices (0 background, 1 unknown,
    2 foreground); ties go to the lower index, as in fusion.argmax_trimap."""
    return torch.argmax(trimap, dim=1)


def click_maps(background: np.ndarray, foreground: np.ndarray, scale: float = 320.0) -> np.ndarray:
    """6 x H x W float32 click maps from H x W boolean masks (their trimap_to_clks).

    Channels 0-2 (background) and 3-5 (foreground): exp(-d^2 / (2 (s L)^2)) for s = 0.02, 0.08,
    0.16, with d the Euclidean distance to the nearest pixel of the class (zero on it) and L
    the click scale. A class absent from the trimap gives zero maps. Their distances come from
    OpenCV's exact L2 transform in float32; the arithmetic below follows theirs in float32.
    """
    if background.shape != foreground.shape or background.ndim != 2:
        raise InputError(
            f"click_maps: expected two H x W masks of one shape, got {background.shape} and {foreground.shape}"
        )
    clicks = np.zeros((CLICK_CHANNELS, *background.shape), dtype=np.float32)
    for k, mask in enumerate((background, foreground)):
        if not mask.any():
            continue
        distance = ndimage.distance_transform_edt(~mask.astype(bool)).astype(np.float32)
        negative_squared = -(distance**2)
        for j, sigma in enumerate(CLICK_SIGMAS):
            clicks[3 * k + j] = np.exp(negative_squared / (2 * (sigma * scale) ** 2))
    return clicks


def window_offsets(length: int, window: int) -> list[int]:
    """Window starts along one side: every half window, plus one flush with the end (their
    extract_semantic_trimap_whole). A side shorter than the window gets one window at 0 over
    the zero-padded image (their slicing with a negative start is not a window)."""
    if length <= window:
        return [0]
    return list(range(0, length - window, window // 2)) + [length - window]


def semantic_scores(
    image: torch.Tensor,
    hard: torch.Tensor,
    classify_window: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    windows: Sequence[int] = (320, 800),
    num_classes: int = len(MATTING_CLASSES),
    window_batch: int = 8,
) -> torch.Tensor:
    """Score maps of one image: 3 x H x W normalised image, H x W hard trimap -> C x H x W.

    For each window size in order, windows every half window (rows outer, columns inner);
    windows without an unknown pixel are skipped; each CAM is added to its window and divided
    by the number of windows covering each pixel; the result is rescaled by its global minimum
    and maximum (uncovered pixels take part as zeros, as in theirs) and zeroed outside the
    unknown band. Degenerate maps (maximum == minimum, e.g. no unknown pixel) give zeros where
    theirs divides by zero.
    """
    height, width = hard.shape
    levels = torch.tensor(TRIMAP_LEVELS, dtype=torch.float32, device=hard.device) / 255.0
    unknown = hard == 1
    total = torch.zeros((num_classes, height, width), dtype=torch.float32, device=image.device)
    count = torch.zeros((1, height, width), dtype=torch.float32, device=image.device)
    level = levels[hard][None].to(image.device, torch.float32)
    image = image.to(torch.float32)
    for window in windows:
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        padded_image = F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image
        padded_level = F.pad(level, (0, pad_w, 0, pad_h)) if pad_h or pad_w else level
        boxes = [
            (top, left)
            for top in window_offsets(height, window)
            for left in window_offsets(width, window)
            if bool(unknown[top : top + window, left : left + window].any())
        ]
        for start in range(0, len(boxes), window_batch):
            chunk = boxes[start : start + window_batch]
            crops = torch.stack([padded_image[:, t : t + window, l : l + window] for t, l in chunk])
            crop_levels = torch.stack([padded_level[:, t : t + window, l : l + window] for t, l in chunk])
            cams = classify_window(crops, crop_levels)
            if tuple(cams.shape) != (len(chunk), num_classes, window, window):
                raise InputError(
                    f"classify_window returned shape {tuple(cams.shape)}; expected "
                    f"{(len(chunk), num_classes, window, window)} (one CAM per window at the window's size)"
                )
            for (top, left), cam in zip(chunk, cams):
                rows, cols = min(window, height - top), min(window, width - left)
                total[:, top : top + rows, left : left + cols] += cam[:, :rows, :cols].to(total)
                count[:, top : top + rows, left : left + cols] += 1
    averaged = total / count.clamp_min(1)
    low, high = averaged.min(), averaged.max()
    if not bool(high > low):
        return torch.zeros_like(averaged)
    return (averaged - low) / (high - low) * unknown.to(averaged)


def sim_guidance(
    image,
    trimap,
    classify_window: ClassifyWindow,
    windows: Sequence[int] = (320, 800),
    click_scale: float = 320.0,
    num_classes: int = len(MATTING_CLASSES),
    window_batch: int = 8,
):
    """The matting network's guidance: N x (2 + 6 + C) x H x W float32.

    Inputs: `image` N x 3 x H x W normalised, `trimap` N x 3 x H x W probabilities in
    (background, unknown, foreground) order, both torch tensors or both NumPy arrays;
    `classify_window(images K x 3 x w x w, trimap_levels K x 1 x w x w) -> K x C x w x w` runs
    the classifier stage of window size w (levels are trimap / 255: 0, 128/255, 1) and
    receives and returns the same kind of array as `image`. With one fixed-shape stage per
    window size, dispatch on the window side (see `guidance_from_stages`).

    Channel order:
      0-1   hard trimap: background, foreground (their trimap_to_2chn);
      2-7   click maps: background at L * (0.02, 0.08, 0.16), then foreground (trimap_to_clks);
      8-..  one score map per matting class (MATTING_CLASSES order) in [0, 1], zero outside
            the unknown band (extract_semantic_trimap_whole).
    The hard trimap is the per-pixel argmax of `trimap`. Each image of a batch is normalised
    on its own (the authors ran one image at a time).
    """
    as_numpy = isinstance(image, np.ndarray)
    if as_numpy != isinstance(trimap, np.ndarray):
        raise InputError("sim_guidance: image and trimap must both be NumPy arrays or both torch tensors")
    image_t = torch.from_numpy(np.ascontiguousarray(image)) if as_numpy else image
    trimap_t = torch.from_numpy(np.ascontiguousarray(trimap)) if as_numpy else trimap
    check_image(image_t, 1, what="sim_guidance image")
    if trimap_t.ndim != 4 or trimap_t.shape[1] != 3 or trimap_t.shape[0] != image_t.shape[0] or trimap_t.shape[2:] != image_t.shape[2:]:
        raise InputError(
            f"sim_guidance: trimap must be N x 3 x H x W probabilities matching the image "
            f"{tuple(image_t.shape)}, got {tuple(trimap_t.shape)}"
        )
    windows = tuple(int(w) for w in windows)
    if not windows or any(w <= 0 for w in windows):
        raise InputError(f"sim_guidance: windows must be positive window sides, got {windows}")
    if window_batch < 1:
        raise InputError(f"sim_guidance: window_batch must be at least 1, got {window_batch}")

    def run_classifier(crops: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if as_numpy:
            return torch.from_numpy(np.asarray(classify_window(crops.numpy(), levels.numpy())))
        return torch.as_tensor(classify_window(crops, levels))

    hard = hard_trimap(trimap_t)
    outputs = []
    for n in range(image_t.shape[0]):
        hard_n = hard[n]
        background, foreground = hard_n == 0, hard_n == 2
        trimap2 = torch.stack([background, foreground]).to(torch.float32)
        hard_cpu = hard_n.cpu().numpy()
        clicks = torch.from_numpy(click_maps(hard_cpu == 0, hard_cpu == 2, click_scale)).to(trimap2.device)
        scores = semantic_scores(image_t[n], hard_n, run_classifier, windows, num_classes, window_batch)
        outputs.append(torch.cat([trimap2, clicks, scores.to(trimap2.device)], dim=0))
    guidance = torch.stack(outputs)
    return guidance.numpy() if as_numpy else guidance


def guidance_from_stages(settings, image, trimap, run_stage: Callable[..., Sequence]):
    """`sim_guidance` with the classifier stages of an exported or served model.

    `settings`: the model's SimSettings or their dict (an export manifest's "settings");
    `run_stage(stage_name, *inputs) -> outputs` runs one stage ("classifier_<w>" with inputs
    image, trimap_level and output cam) on the caller's backend.
    """
    fields = settings if isinstance(settings, dict) else dataclasses.asdict(settings)

    def classify(crops, levels):
        return run_stage(classifier_stage_name(int(crops.shape[-1])), crops, levels)[0]

    return sim_guidance(
        image,
        trimap,
        classify,
        windows=tuple(fields["classifier_windows"]),
        click_scale=float(fields["click_scale"]),
        num_classes=int(fields["num_classes"]),
        window_batch=int(fields["window_batch"]),
    )


__all__ = ["CLICK_CHANNELS", "CLICK_SIGMAS", "MATTING_CLASSES", "TRIMAP_CHANNELS", "TRIMAP_LEVELS", "click_maps",
           "classifier_stage_name", "guidance_from_stages", "hard_trimap", "semantic_scores", "sim_guidance",
           "stages_for", "window_offsets"]
