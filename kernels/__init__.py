"""mattrt.kernels: CUDA C kernels (CuPy launchers), their NumPy references and their checks.

One kernel family per .cu source, each with a Python module holding
  - `<op>_reference(...)`: the NumPy reference (NumPy in, NumPy out);
  - `<op>(...)`: the CuPy launcher with the same signature (CuPy in, CuPy out; raises
    MissingDependencyError without CuPy and a GPU);
  - `launch*(backend, ...)`: the shared launch code, run by the CuPy backend or by the g++ host
    emulation of the same source (emulate.py).
compile.py compiles every source with NVRTC (no GPU needed) and reports registers and spills;
torch_ops.py registers torch.ops.mattrt.* custom ops (imported on demand: it needs torch).
backends.get_backend("cupy" | "emulate") gives the GPU backend or the host emulation by name.

Where the runtime uses them: TorchEngine(kernels=True) runs stage modules with the torch ops
(engines/torch/kernel_routing.py), and Pipeline(pixel_ops="device") runs tile preprocessing,
stitching and trimap fusion through preprocess/stitch/fusion on the GPU (runtime/pixel_ops.py;
pixel_ops="emulate" runs that same path on the emulation, which is how the tests check it), and
runtime/refine.py runs the refinement's band and guided filter through guided_filter (and
morphology's dilation) when asked for "device" or "emulate".

The references are the only NumPy implementations of these ops: the pipeline's host path
(runtime/ops.py) runs them too. Fusion kinds come from the core table mattrt/fusion_kinds.py,
and float-to-integer outputs round by mattrt.imageio.quantise's rule (half to even).

Importing this package needs only NumPy and the core (mattrt.imageio: Pillow): CuPy is imported
when a launcher first runs.
"""

from mattrt.kernels.attention_pool import (
    attention_pool2d,
    attention_pool2d_reference,
    attention_unpool2d,
    attention_unpool2d_reference,
)
from mattrt.kernels.fusion import trimap_fusion, trimap_fusion_reference
from mattrt.kernels.guided_filter import (
    band_seed,
    band_seed_reference,
    box_mean,
    box_mean_reference,
    guided_filter_band,
    guided_filter_band_reference,
)
from mattrt.kernels.max_unpool import max_unpool2d, max_unpool2d_reference
from mattrt.kernels.morphology import dilate, dilate_reference, erode, erode_reference
from mattrt.kernels.preprocess import preprocess_tiles, preprocess_tiles_reference
from mattrt.kernels.stitch import (
    stitch_accumulate,
    stitch_accumulate_reference,
    stitch_finalize,
    stitch_finalize_reference,
)

__all__ = [
    "attention_pool2d",
    "attention_pool2d_reference",
    "attention_unpool2d",
    "attention_unpool2d_reference",
    "band_seed",
    "band_seed_reference",
    "box_mean",
    "box_mean_reference",
    "dilate",
    "dilate_reference",
    "erode",
    "erode_reference",
    "guided_filter_band",
    "guided_filter_band_reference",
    "max_unpool2d",
    "max_unpool2d_reference",
    "preprocess_tiles",
    "preprocess_tiles_reference",
    "stitch_accumulate",
    "stitch_accumulate_reference",
    "stitch_finalize",
    "stitch_finalize_reference",
    "trimap_fusion",
    "trimap_fusion_reference",
]
