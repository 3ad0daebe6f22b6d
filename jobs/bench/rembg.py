"""The two ways a user would otherwise run an imported single-image network, as rembg runs its
models: "rembg" (one onnxruntime session on the original graph file, the image stretched to the
card's square, the card's normalisation, one call, the alpha resized back bilinearly) and
"rembg_am" (that alpha, then rembg's alpha matting: a trimap from its 8-bit mask, > 240
foreground and < 10 background, each eroded by a 10 x 10 square, solved over the whole image by
pymatting's closed-form matting with its defaults, as rembg's bg.alpha_matting_cutout does; its
foreground estimation is not part of the alpha and is not timed). benchmarks/refine.py uses the
same functions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from mattrt.lazy import lazy_import
from mattrt.models.cards import ModelCard
from mattrt.runtime import threads as thread_settings

ort = lazy_import("onnxruntime", probe="onnxruntime")
pymatting = lazy_import("pymatting")  # a dependency of mattrt (the refinement's solver)
ndimage = lazy_import("scipy.ndimage")

# Peak memory pymatting's whole-image closed form added per megapixel, measured at 4K (3402 MiB
# for 8.3 MP, benchmarks/results/refine-2026-12-07.md): sizes it would not fit are skipped.
REMBG_AM_MIB_PER_MEGAPIXEL = 410


def rembg_session(graph: str | Path, threads: int | None):
    """A plain onnxruntime CPU session on `graph`, with mattrt's thread settings."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    thread_settings.configure_onnxruntime(options, threads)
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def rembg_prediction(session, card: ModelCard, image: np.ndarray) -> np.ndarray:
    """The network's output at its input size: the image stretched to the card's size (Pillow
    bilinear), x / scale, (x - mean) / std per channel, the card's activation applied."""
    height, width = card.input.size
    ordered = image[..., ::-1] if card.input.channel_order.upper() == "BGR" else image
    x = np.asarray(Image.fromarray(ordered).resize((width, height), Image.Resampling.BILINEAR), np.float32)
    x = (x / np.float32(card.input.scale) - np.asarray(card.input.mean, np.float32)) / np.asarray(card.input.std,
                                                                                                    np.float32)
    feed = x.transpose(2, 0, 1)[None] if card.input.layout.upper() == "NCHW" else x[None]
    out = np.squeeze(np.asarray(session.run([card.output.name], {card.input.name: np.ascontiguousarray(feed)})[0],
                                np.float32))  # one image, one channel (the card's output is checked at import)
    if card.output.activation == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-out))
    return out


def bilinear(prediction: np.ndarray, height: int, width: int) -> np.ndarray:
    """rembg's upsampling in float: Pillow 'F' bilinear to the image's size, clipped to [0, 1]."""
    resized = Image.fromarray(prediction.astype(np.float32), mode="F").resize((width, height),
                                                                             Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0).astype(np.float32)


def rembg_trimap(alpha: np.ndarray) -> np.ndarray:
    """rembg's trimap (uint8: 0, 128, 255) from an alpha as rembg's 8-bit mask."""
    mask = (alpha * 255).astype(np.uint8)  # rembg truncates: (pred * 255).astype("uint8")
    structure = np.ones((10, 10), np.uint8)
    foreground = ndimage.binary_erosion(mask > 240, structure=structure)
    background = ndimage.binary_erosion(mask < 10, structure=structure, border_value=1)
    trimap = np.full(mask.shape, 128, np.uint8)
    trimap[foreground] = 255
    trimap[background] = 0
    return trimap


def rembg_alpha_matting(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """pymatting's closed-form alpha over the whole image in rembg's trimap (its defaults).
    ValueError where the trimap has no foreground or no background (pymatting refuses it)."""
    trimap = rembg_trimap(alpha)
    return pymatting.estimate_alpha_cf(image / 255.0, trimap / 255.0).astype(np.float32)


def rembg_am_mib(width: int, height: int) -> float:
    """The memory rembg_am is expected to add at this size (REMBG_AM_MIB_PER_MEGAPIXEL)."""
    return width * height / 1e6 * REMBG_AM_MIB_PER_MEGAPIXEL


class RembgWay:
    """rembg's way (or, with alpha_matting, rembg's alpha-matting way) on one imported model:
    run(image) -> (alpha, seconds per stage)."""

    def __init__(self, graph: str | Path, card: ModelCard, threads: int | None, alpha_matting: bool):
        self.graph, self.card, self.threads, self.alpha_matting = Path(graph), card, threads, alpha_matting
        self.session = None
        self.fallbacks: list[str] = []

    def open(self) -> None:
        self.session = rembg_session(self.graph, self.threads)

    def close(self) -> None:
        self.session = None

    def run(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        prediction = rembg_prediction(self.session, self.card, image)
        networked = time.perf_counter()
        alpha = bilinear(prediction, *image.shape[:2])
        upsampled = time.perf_counter()
        timings = {"network": networked - started, "pixel": upsampled - networked}
        if self.alpha_matting:
            try:
                alpha = rembg_alpha_matting(image, alpha)
            except ValueError as exc:  # rembg's remove() then keeps the plain alpha; so does its baseline
                if str(exc) not in self.fallbacks:
                    self.fallbacks.append(str(exc))
            timings["refine"] = time.perf_counter() - upsampled
        return alpha, timings

    def describe(self) -> dict:
        way = ("stretch to the card's size, one onnxruntime session on the original graph, bilinear upsampling"
               + ("; pymatting estimate_alpha_cf over the whole image in rembg's eroded trimap" if self.alpha_matting
                  else ""))
        described = {"graph": str(self.graph), "way": way}
        if self.fallbacks:
            described["fell_back_to_the_plain_alpha"] = self.fallbacks  # as rembg does on pymatting's ValueError
        return described


__all__ = ["REMBG_AM_MIB_PER_MEGAPIXEL", "RembgWay", "bilinear", "rembg_alpha_matting", "rembg_am_mib",
           "rembg_prediction", "rembg_session", "rembg_trimap"]
