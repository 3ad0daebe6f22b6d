"""Fusion of trimap probabilities and the detail network's raw alpha, one function per kind.

Every function takes `trimap` (N x 3 x H x W probabilities in (background, unknown,
foreground) order) and `detail` (N x 1 x H x W raw alpha) and returns alpha (N x 1 x H x W).
They are plain torch ops, so they export to native ONNX ops, and the CUDA fusion kernel is
checked against them. The kinds themselves (names, kernel codes, meanings) are the core table
mattrt/fusion_kinds.py; FUSIONS holds one torch formula per row of it.
"""

from __future__ import annotations

from typing import Callable

import torch

from mattrt.errors import InputError
from mattrt.fusion_kinds import FUSION_KINDS, fusion_kind


def _split(trimap: torch.Tensor, detail: torch.Tensor):
    if trimap.ndim != 4 or trimap.shape[1] != 3:
        raise InputError(f"fusion: trimap must be N x 3 x H x W probabilities, got {tuple(trimap.shape)}")
    if detail.ndim != 4 or detail.shape[1] != 1 or detail.shape[0] != trimap.shape[0] or detail.shape[2:] != trimap.shape[2:]:
        raise InputError(
            f"fusion: detail must be N x 1 x H x W matching the trimap {tuple(trimap.shape)}, got {tuple(detail.shape)}"
        )
    return trimap[:, 0:1], trimap[:, 1:2], trimap[:, 2:3]


def unknown_blend(trimap: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """SHM and Salient Image Matting: alpha = F + U * alpha_detail (soft class probabilities)."""
    _, unknown, foreground = _split(trimap, detail)
    return foreground + unknown * detail


def unified_map(trimap: torch.Tensor) -> torch.Tensor:
    """AIM's unified representation U (0 background, 0.5 transition, 1 foreground) from 3 scores.

    AIM's semantic decoder emits one sigmoid score per class; U is their expectation over the
    class values (0, 0.5, 1), normalised by the scores' sum.
    """
    background, unknown, foreground = trimap[:, 0:1], trimap[:, 1:2], trimap[:, 2:3]
    total = (background + unknown + foreground).clamp_min(1e-6)
    return (0.5 * unknown + foreground) / total


def aim_soft(trimap: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """AIM paper, eq. (2): alpha = (1 - 2|U - 0.5|) M + 2|U - 0.5| U."""
    _split(trimap, detail)
    u = unified_map(trimap)
    confidence = 2.0 * (u - 0.5).abs()
    return (1.0 - confidence) * detail + confidence * u


def argmax_trimap(trimap: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """Hard trimap from the per-pixel argmax: 0 in background, 1 in foreground, the clamped
    raw alpha in the unknown band (AIM's official fusion, Semantic Image Matting, AlphaNet).

    Ties go to the lower class index, as torch.argmax does.
    """
    background, unknown, foreground = _split(trimap, detail)
    is_unknown = (unknown > background) & (unknown >= foreground)
    is_foreground = (foreground > background) & (foreground > unknown)
    alpha = torch.where(is_unknown, detail.clamp(0.0, 1.0), torch.zeros_like(detail))
    return torch.where(is_foreground, torch.ones_like(detail), alpha)


_FORMULAS = {"unknown_blend": unknown_blend, "aim_soft": aim_soft, "argmax_trimap": argmax_trimap}
# One formula per kind of the table (a kind without a formula fails here, at import).
FUSIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {name: _FORMULAS[name] for name in FUSION_KINDS}


def get_fusion(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return FUSIONS[fusion_kind(kind).name]
