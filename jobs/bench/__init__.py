"""`mattrt bench`: latency, throughput and memory of every way mattrt (or a user) can run a model.

Why a benchmark command and not a script: the figures users ask for (how fast is my backend at
4K, what does tiling cost against the resize-everything way, how much memory does an 8K image
take) depend on the machine, so they must be reproducible with one command on that machine.

What one run measures (results in --out, default benchmarks/results/):
Modules: plan.py (what is asked, the cases, the checks before any work), runners.py (how each
kind of variant runs), measure.py (the interleaved runs and their statistics), report.py (rows,
plots, files; `run_bench`), whole_image.py (the rembg-style baseline's graph of a registered
model), rembg.py (the baselines of an imported model).

- cases: a variant (how the model is run) at a resolution. Variant kinds:
  - "tiled": mattrt's Pipeline through a registered backend (torch, onnxruntime, tensorrt) at a
    precision, tile size, tile batch and thread count (deploy/chain.py makes what the backend
    runs, through the artifact cache);
  - "authors": the authors' way: torch eager, the whole network once on the image resized so its
    longer side is the model's semantic canvas (sides cut down to multiples of the stride), the alpha resized
    back (AIM's official hybrid test resizes the whole image rather than tiling it);
  - "whole_onnx": what rembg does: one onnxruntime session over the whole network at a fixed
    S x S canvas, the image resized to it ignoring aspect, one call, the alpha resized back (the
    graph is exported once into the artifact cache folder, bench-whole-*);
  - "alpha": mattrt's Pipeline for a network whose output is alpha (an imported model such as
    ISNet, or an export of one): the network at its canvas, the alpha upsampled and refined at
    full resolution (the card's refinement; onnxruntime FP32 also without it), per backend and
    precision; its baselines (`--model` of an imported model, rembg.py):
  - "rembg": rembg's way: a plain onnxruntime session on the original graph file, the image
    stretched to the card's size, the alpha upsampled bilinearly;
  - "rembg_am": rembg's alpha-matting way: that alpha, then pymatting's closed-form matting over
    the whole image in rembg's eroded trimap (skipped where its measured memory per megapixel
    would exceed half the available memory);
  - "triton": whole images to a Triton server (the registry's backend whose `pipeline_opener`
    runs the pipeline remotely; needs --triton-url).
  A backend, device or server that is absent is recorded as skipped with the reason the
  registry's probes give (Backend.missing); nothing is replaced by something else.
- per run, end to end: read/decode of a PNG (I/O), the matting, write/encode of the 16-bit alpha
  PNG (I/O); per stage from the Pipeline's timings: semantic, detail, pixel work (everything
  else: tile preprocessing, stitching, fusion, resizes), and for the baselines "network";
  on cuda, the device time of the matting by CUDA events.
- statistics over the measured runs (warm-up rounds excluded): p50, p90, p99 (linear
  interpolation between order statistics), mean, std (sample, ddof 1), images/s and
  megapixels/s from the mean end-to-end time.
- memory: host peak RSS added by a run, measured in this process by resetting the kernel's
  high-water mark (VmHWM, via /proc/self/clear_refs) just before each step and reading it just
  after, so variants interleaved in one process are still separated: per step (I/O read, matting,
  I/O write; the high-water mark over all runs of a case, warm-up included, since the first run
  makes the allocations later ones reuse) and, once per tiled case, the semantic pass and one
  detail batch alone. On cuda:
  torch.cuda.max_memory_allocated (reset per run) and the CuPy pool size.
- accuracy: on synthetic images with exact alpha (calibration.synthetic), SAD and MSE of each
  variant's alpha against the ground truth (calibration.metrics), so tiled full resolution and
  the two baselines are compared on time and error in the same run.

Interleaving: every round runs every case once (round-robin, the starting case rotating each
round), warm-up rounds first; so a noisy machine slows all variants alike and ratios hold.

Bad input (unknown backend, tile larger than an image, a tile that is not a multiple of the
stride, batch 0, resolution tokens that do not parse, results that would overwrite files) is
refused before any work.
"""
