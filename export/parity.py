"""Parity of exported graphs with PyTorch: onnxruntime (CPU) against the module, per output.

Figures per output: max abs error and relative L2 error ||onnx - torch|| / ||torch||. Feeds:
fresh random inputs, and generated images (mattrt.data.synthetic) preprocessed with
the model's normalisation (the
detail stage's guidance then comes from the model's own semantic stage on that image), each
at batch 1 and at a batch > 1.

FP32 graphs pass at relative L2 <= 1e-4 against PyTorch FP32; where PyTorch FP32 is itself
further than that from float64 (max-unpooling networks whose pool windows hold near-equal
values), `judge` compares both with float64 instead.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from mattrt.data.synthetic import KINDS, generate_sample, sample_rng
from mattrt.errors import MattrtError
from mattrt.runtime.ops import preprocess_tiles

# Relative L2 error allowed per precision.
TOLERANCE = {"fp32": 1e-4}
# See `judge`: how much further from float64 than PyTorch FP32 itself a graph may be.
NOISE_FACTOR = 2.0


class ParityError(MattrtError):
    """An exported graph whose outputs differ from PyTorch's beyond tolerance."""


@dataclass(frozen=True)
class OutputParity:
    feed: str  # "random", "image", ...
    batch: int
    output: str
    max_abs: float
    rel_l2: float

    def line(self) -> str:
        return f"{self.feed:>6} b{self.batch} {self.output:<10} max abs {self.max_abs:.2e}  rel L2 {self.rel_l2:.2e}"


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative L2 error); relative to 1 where the reference is all zeros."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(f"output shape {candidate.shape} differs from PyTorch's {reference.shape}")
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(candidate)) or not np.array_equal(
        reference[~finite], candidate[~finite], equal_nan=True
    ):
        return float("inf"), float("inf")
    diff = np.where(finite, candidate - reference, 0.0)
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    norm = float(np.linalg.norm(np.where(finite, reference, 0.0)))
    rel = float(np.linalg.norm(diff)) / (norm if norm > 0 else 1.0)
    return max_abs, rel


def ort_session(model_proto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _as_numpy(result) -> list[np.ndarray]:
    if isinstance(result, torch.Tensor):
        result = (result,)
    elif isinstance(result, dict):
        result = tuple(result.values())
    return [r.detach().cpu().numpy() for r in result]


def torch_outputs(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.astype(np.float32, copy=False) for o in _as_numpy(module(*inputs))]


def reference_outputs(module: torch.nn.Module, feed_sets: dict) -> dict:
    """PyTorch's outputs for every feed set, computed once and compared with each candidate graph."""
    return {key: torch_outputs(module, tensors) for key, tensors in feed_sets.items()}


def run_graph(session, input_names: Sequence[str], output_names: Sequence[str], feed_sets: dict) -> dict:
    """onnxruntime's outputs for every feed set (keyed (feed, batch))."""
    return {
        key: session.run(list(output_names), {n: t.numpy() for n, t in zip(input_names, tensors)})
        for key, tensors in feed_sets.items()
    }


def compare_all(references: dict, candidates: dict, output_names: Sequence[str]) -> list[OutputParity]:
    results = []
    for (feed, batch), reference in references.items():
        got = candidates[(feed, batch)]
        if len(reference) != len(got):
            raise ParityError(f"PyTorch returned {len(reference)} outputs, the graph {len(got)}")
        for name, ref, out in zip(output_names, reference, got):
            max_abs, rel = compare(ref, out)
            results.append(OutputParity(feed, batch, name, max_abs, rel))
    return results


def double_reference(module: torch.nn.Module, feed_sets: dict) -> dict | None:
    """The module's outputs in float64 (None where the module does not run in float64)."""
    try:
        exact = copy.deepcopy(module).double()
        with torch.no_grad():
            return {
                key: [o.astype(np.float64) for o in _as_numpy(exact(*[t.double() for t in tensors]))]
                for key, tensors in feed_sets.items()
            }
    except Exception:  # e.g. a model that casts to float32 internally
        return None


def judge(
    module: torch.nn.Module, references: dict, candidates: dict, feed_sets: dict,
    output_names: Sequence[str], tolerance: float,
) -> tuple[dict, list[OutputParity]]:
    """Parity summary of a graph's outputs (`candidates`) against PyTorch FP32 (`references`).

    Passing needs relative L2 <= tolerance on every output. A network can be more sensitive
    than that to rounding: where max-pool windows hold near-equal values, the last bit of a
    convolution (which differs between oneDNN, MLAS and TensorRT kernels) decides the index the
    unpooling uses. Then PyTorch's own FP32 result is also that far from the float64 result, so
    only there the graph is judged against float64 instead: it passes if its error is at most
    the tolerance or `NOISE_FACTOR` times PyTorch FP32's own error.
    """
    results = compare_all(references, candidates, output_names)
    worst = max((r.rel_l2 for r in results), default=0.0)
    summary = {
        "tolerance_rel_l2": tolerance,
        "rule": "relative L2 vs PyTorch FP32",
        "passed": bool(worst <= tolerance),
        "worst_rel_l2": worst,
        "worst_max_abs": max((r.max_abs for r in results), default=0.0),
        "checks": [asdict(r) for r in results],
    }
    if summary["passed"]:
        return summary, results
    exact = double_reference(module, feed_sets)
    if exact is None:
        summary["fp64"] = "unavailable: the module does not run in float64"
        return summary, results
    pytorch_error = compare_all(exact, references, output_names)
    graph_error = compare_all(exact, candidates, output_names)
    checks = []
    for torch_result, graph_result in zip(pytorch_error, graph_error):
        allowed = max(tolerance, NOISE_FACTOR * torch_result.rel_l2)
        checks.append({
            "feed": graph_result.feed, "batch": graph_result.batch, "output": graph_result.output,
            "pytorch_fp32_rel_l2": torch_result.rel_l2, "graph_rel_l2": graph_result.rel_l2, "allowed": allowed,
        })
    summary["rule"] = f"relative L2 vs float64 <= max(tolerance, {NOISE_FACTOR:g} x PyTorch FP32's own)"
    summary["passed"] = all(c["graph_rel_l2"] <= c["allowed"] for c in checks)
    summary["fp64_checks"] = checks
    return summary, results


# -- inputs ----------------------------------------------------------------------------------
def generated_image(size: int, index: int = 0, seed: int = 0) -> np.ndarray:
    """A deterministic size x size x 3 uint8 image from mattrt.data.synthetic; successive
    indices cycle through its image kinds (opaque hair/fur, transparent, non-salient)."""

    kind = KINDS[index % len(KINDS)]
    return generate_sample(kind, (size, size), sample_rng(seed, index)).image


def normalize(image: np.ndarray, settings) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32 as the model expects (channel order, mean,
    std), with the runtime's own tile preprocessing (one tile covering the image)."""

    if settings.channel_order.upper() == "BGR":
        image = image[..., ::-1]
    origin = np.zeros((1, 2), dtype=np.int64)
    tile = preprocess_tiles(np.ascontiguousarray(image), origin, image.shape[:2], settings.mean, settings.std)
    return torch.from_numpy(tile)


def image_batch(size: int, batch: int, settings, seed: int = 0) -> torch.Tensor:
    return torch.cat([normalize(generated_image(size, i, seed), settings) for i in range(batch)])


def image_feeds(model, stage, batch: int, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], dict[str, str]]:
    """Inputs of `stage` derived from generated images, and where each came from.

    "image" is the normalised image; "guidance" is the model's guidance from its own semantic
    stage's trimap on the same image (upsampled to the stage size); inputs the contract does not
    define for images stay random in [0, 1].
    """
    size = stage.spatial_size
    image = image_batch(size, batch, model.settings, seed)
    stages = model.stages()
    trimap = None
    tensors, sources = [], {}
    generator = torch.Generator().manual_seed(seed + 1000)
    for spec in stage.inputs:
        if spec.name == "image":
            tensors.append(image)
            sources[spec.name] = "image"
            continue
        if spec.name == "guidance" and "semantic" in stages and stage.name != "semantic":
            if trimap is None:
                semantic = stages["semantic"]
                with torch.no_grad():
                    outs = semantic.module(image_batch(semantic.spatial_size, batch, model.settings, seed))
                outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
                trimap = outs[semantic.output_names.index("trimap")]
                trimap = F.interpolate(trimap, size=(size, size), mode="bilinear", align_corners=False)
            with torch.no_grad():
                guidance = model.guidance(image, trimap)
            if isinstance(guidance, torch.Tensor) and tuple(guidance.shape) == (batch, spec.channels, size, size):
                tensors.append(guidance.float().contiguous())
                sources[spec.name] = "semantic stage on the image"
                continue
        tensors.append(torch.rand(batch, spec.channels, size, size, generator=generator))
        sources[spec.name] = "random"
    return tuple(tensors), sources


__all__ = [
    "OutputParity",
    "ParityError",
    "TOLERANCE",
    "compare",
    "compare_all",
    "double_reference",
    "generated_image",
    "image_feeds",
    "normalize",
    "judge",
    "ort_session",
    "reference_outputs",
    "run_graph",
    "torch_outputs",
]
