"""The fusion kinds: how trimap probabilities and the detail stage's raw alpha become alpha.

One table for every implementation. Models name a kind in their settings (`fusion`), the torch
formulas (models/fusion.py, exported to ONNX), the NumPy reference (kernels/fusion.py) and the
CUDA kernel (kernels/trimap_fusion.cu, which takes the kind's `code`) are all keyed by it, so a
new kind is a row here plus its formulas there. It lives in the core because models and kernels
are independent siblings that both need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mattrt.errors import InputError


@dataclass(frozen=True)
class FusionKind:
    name: str
    code: int  # the `kind` argument of trimap_fusion.cu
    meaning: str


FUSION_KINDS: dict[str, FusionKind] = {
    kind.name: kind
    for kind in (
        FusionKind("unknown_blend", 0, "alpha = F + U * raw alpha on soft class probabilities "
                                       "(SHM, Salient Image Matting)"),
        FusionKind("aim_soft", 1, "AIM eq. (2): alpha = (1 - 2|U - 0.5|) raw + 2|U - 0.5| U, U the expectation of "
                                  "(0, 0.5, 1) under the normalised class scores"),
        FusionKind("argmax_trimap", 2, "hard per-pixel argmax (ties to the lower class): 0 background, 1 foreground, "
                                       "the raw alpha clamped to [0, 1] in the unknown band (AIM's code, SIM, AlphaNet)"),
    )
}


def fusion_kind(name: str) -> FusionKind:
    """The kind called `name`; an unknown name is an InputError listing the known ones."""
    try:
        return FUSION_KINDS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown fusion kind {name!r}; known: {', '.join(FUSION_KINDS)}") from None


__all__ = ["FUSION_KINDS", "FusionKind", "fusion_kind"]
