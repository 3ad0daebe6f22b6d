"""The openvino backend beyond the shared engine contract (tests/test_backend_conformance.py):
its precisions (bf16 a precision of its own, refused where the CPU lacks it; int8 from the CPU
graph, never the TensorRT form), fixed-batch compiles, thread and precision settings, outputs that
later calls do not overwrite, and its errors (missing library, graphs it cannot compile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mattrt.availability import Probe, available, skip_reason
from mattrt.cli import main
from mattrt.deploy.plan import export_pipeline
from mattrt.engines import backends
from mattrt.engines.openvino import engine as ov_engine
from mattrt.errors import InputError, MissingDependencyError
from mattrt.manifest import GraphEntry, TensorInfo
from mattrt.runtime import engine as runtime_engine

pytestmark = pytest.mark.skipif(not available("openvino"), reason=skip_reason("openvino"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export_dir() -> Path:
    """The tiny AIM export with FP16 and INT8 graphs of tests/test_calibration.py."""
    from test_calibration import tiny_export_with_precisions

    return tiny_export_with_precisions()


def _feeds(engine, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m.name: rng.random((batch, *m.shape[1:]), dtype=np.float32) for m in engine.inputs}


def _image(size=(96, 128), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


# -- precisions -------------------------------------------------------------------------------------
def test_each_precision_compiles_with_an_explicit_hint_and_the_threads_asked_for(export_dir):
    backend = backends.get_backend("openvino")
    for precision, hint in (("fp32", "f32"), ("int8", "f32")) + ((("bf16", "bf16"),) if not backend.refusal(
            "cpu", "bf16") else ()):
        _, engines = backend.open(export_dir, device="cpu", precision=precision, threads=1)
        with engines["detail"] as engine:
            engine.run(_feeds(engine, 1, seed=0))
            compiled = engine._requests[1].get_compiled_model()
            assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == hint
            assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
            assert engine.precision == precision and f"hint {hint}" in engine.describe()


def test_int8_runs_the_cpu_graph_never_the_tensorrt_form(export_dir):
    _, engines = backends.get_backend("openvino").open(export_dir, device="cpu", precision="int8")
    assert {e.loader.path.name for e in engines.values()} == {"semantic.int8_cpu.onnx", "detail.int8_cpu.onnx"}
    entry = GraphEntry("detail", [TensorInfo("image", ["batch", 3, 8, 8], "float32")],
                       [TensorInfo("detail", ["batch", 1, 8, 8], "float32")], 8,
                       files={"fp32": "detail.onnx", "int8": "detail.int8.onnx"})
    with pytest.raises(InputError, match="no CPU INT8 graph for stage 'detail'.*mattrt precision"):
        ov_engine.graph_file(entry, "int8", Path("exports/x"))
    assert ov_engine.graph_file(entry, "bf16", Path("exports/x")) == "detail.onnx"


def test_int8_agrees_with_onnxruntime_within_a_tolerance(export_dir):
    """OpenVINO's int8 results differ slightly from one compile to the next (two variants up to
    ~0.016 apart, benchmarks/results/openvino-research-2026-12-07.md): compared to onnxruntime on
    the same U8S8 graph with a tolerance."""
    _, ours = backends.get_backend("openvino").open(export_dir, device="cpu", precision="int8")
    _, theirs = backends.get_backend("onnxruntime").open(export_dir, device="cpu", precision="int8")
    feeds = _feeds(ours["detail"], 2, seed=4)
    with ours["detail"] as a, theirs["detail"] as b:
        got, want = a.run(feeds)["detail"], b.run(feeds)["detail"]
    assert np.abs(got - want).max() < 0.1 and np.abs(got - want).mean() < 0.01


def test_bf16_is_refused_naming_the_cpu_flag_where_the_cpu_lacks_it(export_dir, monkeypatch):
    monkeypatch.setattr(ov_engine, "capabilities", lambda: ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"])
    backend = backends.get_backend("openvino")
    with pytest.raises(InputError, match="--precision bf16 needs a CPU with native bfloat16 .*avx512_bf16"):
        backend.open(export_dir, device="cpu", precision="bf16")
    assert "avx512_bf16" in backend.unavailable("cpu", "bf16")
    assert backend.unavailable("cpu", "fp32") is None


@pytest.mark.skipif(available("openvino") and bool(backends.get_backend("openvino").refusal("cpu", "bf16")),
                    reason="this CPU has no native bf16")
def test_bf16_is_asked_for_and_reported(export_dir, tmp_path, capsys):
    image = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(_image()).save(image)
    out = tmp_path / "out"
    assert main(["infer", str(image), "--out", str(out), "--artifacts", str(export_dir), "--backend", "openvino",
                 "--precision", "bf16", "--no-progress"]) == 0
    assert "backend: openvino on cpu, bf16 (asked for with --backend openvino)" in capsys.readouterr().err
    pipeline = json.loads((out / "summary.json").read_text())["pipeline"]
    assert (pipeline["backend"], pipeline["precision"]) == ("openvino", "bf16")
    # bf16 runs the fp32 graphs: the alpha stays close to openvino fp32's
    with export_pipeline(export_dir, backend="openvino", precision="fp32") as fp32, \
            export_pipeline(export_dir, backend="openvino", precision="bf16") as bf16:
        difference = np.abs(fp32.run(_image()).alpha - bf16.run(_image()).alpha)
    assert difference.mean() < 0.02


def test_other_backends_refuse_bf16_and_openvino_refuses_fp16(export_dir):
    with pytest.raises(InputError, match="the onnxruntime backend runs precision fp32, fp16, int8, not 'bf16'"):
        backends.get_backend("onnxruntime").open(export_dir, device="cpu", precision="bf16")
    with pytest.raises(InputError, match="the openvino backend runs precision fp32, bf16, int8, not 'fp16'"):
        backends.get_backend("openvino").open(export_dir, device="cpu", precision="fp16")
    with pytest.raises(InputError, match="runs on cpu, not 'cuda'"):
        backends.get_backend("openvino").open(export_dir, device="cuda", precision="fp32")


# -- running --------------------------------------------------------------------------------------
def test_one_fixed_batch_compile_per_size_on_first_use(export_dir, monkeypatch):
    monkeypatch.setattr(ov_engine, "MAX_COMPILED", 2)
    _, engines = backends.get_backend("openvino").open(export_dir, device="cpu", precision="fp32")
    with engines["detail"] as engine:
        assert engine.compiled_batches == []  # each size compiled on first use (it holds memory)
        outputs = {b: engine.run(_feeds(engine, b, seed=b))["detail"] for b in (3, 1, 2)}
        assert engine.compiled_batches == [1, 2]  # least recently used (3) dropped
        assert all(outputs[b].shape[0] == b for b in outputs)
        again = engine.run(_feeds(engine, 3, seed=3))["detail"]
    np.testing.assert_array_equal(again, outputs[3])  # recompiled, same fp32 result


def test_returned_outputs_are_not_overwritten_by_the_next_call(export_dir):
    _, engines = backends.get_backend("openvino").open(export_dir, device="cpu", precision="fp32")
    with engines["detail"] as engine:
        first = engine.run(_feeds(engine, 2, seed=1))["detail"]
        kept = first.copy()
        engine.run(_feeds(engine, 2, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_pipeline_alpha_equals_onnxruntime_at_fp32(export_dir):
    with export_pipeline(export_dir, backend="openvino") as ours, export_pipeline(export_dir) as theirs:
        difference = np.abs(ours.run(_image()).alpha - theirs.run(_image()).alpha)
    assert difference.max() < 1e-4


# -- errors ---------------------------------------------------------------------------------------
def _graph_with(node: onnx.NodeProto, path: Path, opset_imports=None) -> Path:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=opset_imports or [helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_a_graph_it_cannot_convert_is_an_error_naming_node_and_operator(tmp_path):
    path = _graph_with(helper.make_node("FancyMatte", ["image"], ["out"], name="my_matte_node", domain="com.example"),
                       tmp_path / "custom.onnx",
                       [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    engine = ov_engine.OpenVinoEngine(ov_engine.CompiledModelLoader(path))
    with pytest.raises(InputError) as error:
        engine.activate()
    message = str(error.value)
    assert "com.example.FancyMatte" in message and "my_matte_node (com.example.FancyMatte)" in message
    assert "--backend onnxruntime" in message and str(path) in message
    path = _graph_with(helper.make_node("NoSuchOp", ["image"], ["out"], name="odd_node"), tmp_path / "odd.onnx")
    with pytest.raises(InputError, match=r"NoSuchOp.*odd_node \(NoSuchOp\)"):
        ov_engine.OpenVinoEngine(ov_engine.CompiledModelLoader(path)).activate()


def test_a_damaged_graph_is_an_error_saying_so(tmp_path):
    good = _graph_with(helper.make_node("Relu", ["image"], ["out"]), tmp_path / "relu.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(good.read_bytes()[:40])
    engine = ov_engine.OpenVinoEngine(ov_engine.CompiledModelLoader(damaged), inputs=(), outputs=())
    with pytest.raises(InputError, match="OpenVINO .* cannot read .*damaged.onnx.*re-export"):
        engine.activate()


def test_missing_openvino_names_the_probe_and_the_install(export_dir, monkeypatch, tmp_path, capsys):
    missing = Probe("openvino", False, None, "not installed; `pip install 'mattrt[openvino]'` (...)")
    real = runtime_engine.probe
    monkeypatch.setattr(runtime_engine, "probe", lambda name: missing if name == "openvino" else real(name))
    with pytest.raises(MissingDependencyError, match="the openvino backend on cpu needs openvino.*pip install 'mattrt\\[openvino\\]'"):
        backends.get_backend("openvino").open(export_dir, device="cpu", precision="fp32")
    assert main(["infer", "x.png", "--out", str(tmp_path / "o"), "--artifacts", str(export_dir),
                 "--backend", "openvino"]) == 1
    assert "needs openvino" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_doctor_lists_the_backend(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["openvino", "found"] for line in out.splitlines())
    assert any(line.split()[:3] == ["openvino", "cpu", "usable"] for line in out.splitlines())


def test_importing_declines_openvinos_telemetry():
    script = ("import os; os.environ.pop('CI', None)\n"
              "from mattrt.engines.openvino.engine import ov\n"
              "ov.Core\n"
              "import openvino.tools.ovc as ovc\n"
              "print(ovc.telemetry.consent, 'CI' in os.environ)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert result.stdout.split() == ["False", "False"], result.stderr
