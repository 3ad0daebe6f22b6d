"""mattrt.commands: the command-line interface, one module per command or family of commands.

One registration pattern: a command module defines `COMMANDS = {name: Command(arguments, run,
description)}` (mattrt/commands/command.py) for the commands it provides, and INDEX below names each command's module and
one-line help. `mattrt --help` lists INDEX without importing any command module (it stays
instant); `mattrt NAME ...` imports NAME's module alone, which imports what it runs plainly at
its top (mattrt/cli.py builds the parser).

The shared options (a model or export and the backend to run it on; precision variants) and the
value types of every option are in mattrt/commands/arguments.py.
"""

from __future__ import annotations

import importlib

from mattrt.commands.command import Command

# name -> (module, one-line help), in the order `mattrt --help` lists them.
INDEX: dict[str, tuple[str, str]] = {
    "models": ("mattrt.commands.info",
               "list registered models (stages, parameter counts) and imported models (source, licence)"),
    "import": ("mattrt.commands.imports",
               "register an ONNX matting network described by a model card (TOML), normalised and checked"),
    "fetch": ("mattrt.commands.imports",
              "download a network mattrt knows (isnet), verify it against pinned SHA-256s and import it"),
    "doctor": ("mattrt.commands.info",
               "report what this machine has (Python, torch, onnxruntime, CUDA, TensorRT, CuPy, Triton)"),
    "demo": ("mattrt.commands.demo",
             "the main job end to end: ISNet fetched once, real photographs and a synthetic 4K scene matted through "
             "Triton and in-process (FP32, INT8), report.html / report.json"),
    "export": ("mattrt.commands.export",
               "export a model's stages and fusion to ONNX with a manifest, parity checks and a TensorRT lint"),
    "precision": ("mattrt.commands.precision", "add FP16 and/or INT8 (Q/DQ, calibrated) graphs to an export directory"),
    "fidelity": ("mattrt.commands.precision", "compare an export's FP32, FP16 and INT8 graphs through the full pipeline"),
    "lint": ("mattrt.commands.tensorrt",
             "check exported ONNX graphs against what TensorRT 10.x/11.x's ONNX parser accepts"),
    "build": ("mattrt.commands.tensorrt", "build TensorRT plans (one per stage) from an export directory"),
    "infer": ("mattrt.commands.infer", "matte images (files, folders, globs) with a model or an export directory"),
    "batch": ("mattrt.commands.batch",
              "matte many images as one job on Ray Data (this machine or a Ray cluster), with a manifest and resume"),
    "cache": ("mattrt.commands.cache", "list or clear the artifact cache (exports and engines made for --model runs)"),
    "triton-repo": ("mattrt.commands.serving",
                    "write a Triton model repository (stage models + a BLS pipeline model) from an export directory "
                    "or a model"),
    "serve": ("mattrt.commands.serving", "run Triton Inference Server over a repository written by `mattrt triton-repo`"),
    "bench": ("mattrt.commands.bench",
              "benchmark backends, precisions, resolutions, tiles and the resize baselines side by side"),
    "eval": ("mattrt.commands.evaluate",
             "compare predicted alpha mattes with ground truth (SAD, MSE, MAD, Grad, Conn, PSNR)"),
    "synth": ("mattrt.commands.synth", "generate synthetic images with exact alpha, foreground and background"),
}


def load(name: str) -> Command:
    """The Command named `name` (its module is imported now)."""
    module, _ = INDEX[name]
    return importlib.import_module(module).COMMANDS[name]


__all__ = ["Command", "INDEX", "load"]
