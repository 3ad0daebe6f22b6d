"""Real photographs for measurements and calibration: the ones scikit-image ships in its wheel.

    for name, rgb in photographs(): ...          # H x W x 3 uint8 RGB

No download: astronaut, chelsea (a cat: fur), coffee, motorcycle_left, motorcycle_right and
rocket are files inside the scikit-image package (skimage/data/), read by its `skimage.data`
functions. Imported networks trained on photographs need them: calibrating ISNet on mattrt's
synthetic scenes drives its decoder activations about 50x beyond their photographic range and
ruins the INT8 graph (mask IoU 0.48 against FP32), while these photographs keep it at 0.986 or
better (README: "Imported models").
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from mattrt.errors import InputError
from mattrt.lazy import lazy_import

skimage_data = lazy_import("skimage.data")

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "motorcycle_left", "motorcycle_right", "rocket")


def photograph(name: str) -> np.ndarray:
    """One bundled photograph as H x W x 3 uint8 RGB."""
    if name not in PHOTOGRAPHS:
        raise InputError(f"unknown photograph {name!r}; the bundled ones are {', '.join(PHOTOGRAPHS)}")
    if name.startswith("motorcycle_"):
        left, right, _ = skimage_data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(skimage_data, name)()
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])


def photographs(names: Sequence[str] = PHOTOGRAPHS) -> Iterator[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8 RGB) for each named photograph, in order."""
    for name in names:
        yield name, photograph(name)


__all__ = ["PHOTOGRAPHS", "photograph", "photographs"]
