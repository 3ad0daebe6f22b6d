"""`mattrt import`: model cards, the card checked against its graph, normalisation with parity, the
registry under the cache directory, the artifact-cache entry, `mattrt models`, and every refusal.

The networks are tiny synthetic ONNX graphs made here (tests/onnx_nets.py): FP16 weights and Casts
(not topologically sorted), side outputs, NHWC and logits variants."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx_nets import SIZE, alpha_net, card_text, flat_input_net, two_input_net, write_model

from mattrt.calibration import variants
from mattrt.calibration.calibrate import check_percentile, symmetric_quantize_options
from mattrt.calibration.feeds import StageFeeds, iter_images, parse_data_source
from mattrt.cli import main
from mattrt.data.photographs import PHOTOGRAPHS, photographs
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.imported import import_card
from mattrt.deploy.plan import DeploymentRequest, deployment_chain
from mattrt.deploy.sources import CardSource, model_source
from mattrt.deploy.steps import GraphsFromSource, calibration_recipe
from mattrt.engines.onnxruntime.engine import open_artifacts
from mattrt.errors import InputError, UnknownModelError
from mattrt.export.onnx_import import fit_to_canvas
from mattrt.manifest import Manifest
from mattrt.models.cards import load_card
from mattrt.models.imported import find_imported, imported_root


def _import(card: Path, cache: Path, *extra) -> int:
    return main(["import", str(card), "--cache-dir", str(cache), *map(str, extra)])


def _stored(cache: Path) -> list[str]:
    """Everything under the registry folder (hidden temporary folders included)."""
    root = imported_root(cache)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _run_original(path: Path, x: np.ndarray, layout: str, output: str) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x
    return session.run([output], {"input": np.ascontiguousarray(feed)})[0]


# -- the card --------------------------------------------------------------------------------------
def test_a_card_reads_back_with_every_default_written_out(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(card_text("tiny", extra='[calibration]\ndata = "photographs"\nmethod = "percentile"\n'
                                             'percentile = 99.99\nkeep_float = ["/Sigmoid"]\n'))
    card = load_card(path)
    assert card.graph_path == tmp_path / "net.onnx"
    assert card.input.layout == "NCHW" and card.input.channel_order == "RGB" and card.input.size == (SIZE, SIZE)
    assert card.to_dict()["input"]["channel_order"] == "RGB"  # defaults are written out, never implied
    assert card.calibration == {"data": "photographs", "method": "percentile", "percentile": 99.99,
                                "keep_float": ["/Sigmoid"]}
    # scale 255: the runtime's [0, 1] normalisation is the card's; scale 1 (pixel values) divides by 255
    assert card.normalization()["mean"] == [0.5, 0.5, 0.5]
    other = tmp_path / "pixels.toml"
    other.write_text(card_text("pixels").replace("scale = 255.0", "scale = 1.0").replace(
        "mean = [0.5, 0.5, 0.5]", "mean = [127.5, 127.5, 127.5]"))
    norm = load_card(other).normalization()
    assert np.allclose(norm["mean"], 0.5) and np.allclose(norm["std"], 1 / 255)


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("mean = [0.5, 0.5, 0.5]\n", ""), "input.mean: missing (required)"),
    (lambda t: t.replace("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]"), "input.mean: [0.5, 0.5] is not three numbers"),
    (lambda t: t.replace('fit = "stretch"', 'fit = "crop"'), "input.fit: 'crop' is not \"stretch\" or \"letterbox\""),
    (lambda t: t.replace('layout = "NCHW"', 'colour = "RGB"'), "input.colour: unknown key"),
    (lambda t: t.replace('name = "tiny"', 'name = "Tiny Net"'), "name: 'Tiny Net' is not a model name"),
    (lambda t: t.replace('activation = "none"', 'activation = "softmax"'), "output.activation: 'softmax' is not"),
    (lambda t: t + '[calibration]\nmethod = "entropy"\npercentile = 99.9\n', "calibration.percentile: applies to"),
    (lambda t: t.replace("std = [1.0, 1.0, 1.0]", "std = [1.0, 0.0, 1.0]"), "input.std[1]: 0.0 is not a positive number"),
    (lambda t: t.replace('[output]', '[output\n'), "is not valid TOML"),
], ids=["missing", "short", "enum", "unknown-key", "name", "activation", "percentile", "std", "toml"])
def test_card_errors_name_the_key(tmp_path, edit, fragment):
    path = tmp_path / "tiny.toml"
    path.write_text(edit(card_text("tiny")))
    with pytest.raises(InputError) as caught:
        load_card(path)
    assert fragment in str(caught.value) and str(path) in str(caught.value)


def test_a_card_without_a_required_key_is_refused_naming_it(tmp_path, capsys):
    card = write_model(tmp_path, "tiny", alpha_net())
    card.write_text(card.read_text().replace("mean = [0.5, 0.5, 0.5]\n", "").replace('name = "tiny"', 'name = "tiny"\ncolour = 1'))
    assert _import(card, tmp_path / "cache") == 1
    err = capsys.readouterr().err
    assert "is not a valid model card: " in err and "input.mean: missing (required)" in err
    assert "colour: unknown key (known here: calibration, description, file, input," in err
    assert not imported_root(tmp_path / "cache").exists()


# -- import, normalisation, parity -----------------------------------------------------------------
VARIANTS = {
    "fp16-nchw-side-outputs": dict(model=dict(), card=dict()),
    "fp16-nhwc": dict(model=dict(layout="NHWC"), card=dict(layout="NHWC")),
    "logits-letterbox": dict(model=dict(activation="sigmoid"), card=dict(activation="sigmoid", fit="letterbox")),
    "fp32-dynamic-size": dict(model=dict(fp16=False, unsorted=False, side_outputs=False, dynamic_size=True),
                              card=dict(size=None)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_normalises_the_graph_and_measures_parity(tmp_path, variant, capsys):
    spec = VARIANTS[variant]
    model = alpha_net(**spec["model"])
    card = write_model(tmp_path / "src", "tiny", model, **spec["card"])
    cache = tmp_path / "cache"
    extra = ["--semantic-size", 48] if spec["card"].get("size", SIZE) is None else []  # a graph of dynamic size
    assert _import(card, cache, *extra) == 0
    err = capsys.readouterr().err
    assert "parity with onnxruntime on the original file" in err and "within the 0.001 target" in err

    stored = find_imported("tiny", cache)
    assert stored.card.file == "tiny.onnx" and stored.graph.read_bytes() == (tmp_path / "src/net.onnx").read_bytes()
    graphs = GraphsFromSource(model_source("tiny", cache_dir=cache), cache=ArtifactCache(cache, log=None))()
    manifest = graphs.manifest
    size = 48 if extra else SIZE
    fit = spec["card"].get("fit", "stretch")
    assert manifest.network["output"] == "alpha" and manifest.network["fit"] == fit
    assert manifest.network["card"]["name"] == "tiny" and manifest.fusion is None and manifest.fusion_graph is None
    (stage,) = manifest.stages
    assert [t.name for t in stage.inputs] == ["image"] and stage.inputs[0].shape == ["batch", 3, size, size]
    assert [t.name for t in stage.outputs] == ["alpha"] and stage.outputs[0].shape == ["batch", 1, size, size]
    assert manifest.max_batch > 1 and stage.parity["batch"]["ok"]
    assert stage.parity["as_given_max_abs"] <= 1e-6 and stage.parity["within_target"]
    graph = onnx.load(str(graphs.directory / stage.files["fp32"]))
    assert not [n for n in graph.graph.node if n.op_type == "Cast"]
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert [o.name for o in graph.graph.output] == ["alpha"]

    # The normalised graph against the original, here too: batch 2, any layout, logits -> sigmoid.
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    spec_, engines = open_artifacts(graphs.directory)
    with engines["semantic"] as engine:
        alpha = engine.run({"image": x})["alpha"]
    layout = spec["card"].get("layout", "NCHW")
    reference = np.concatenate([_run_original(tmp_path / "src/net.onnx", x[i:i + 1], layout, "output")
                                for i in range(2)])
    if layout == "NHWC":
        reference = reference.transpose(0, 3, 1, 2)
    if spec["card"].get("activation") == "sigmoid":
        reference = 1 / (1 + np.exp(-reference))
    assert alpha.shape == (2, 1, size, size) and np.abs(alpha - reference).max() <= 1e-2
    assert spec_.semantic_output == "alpha" and spec_.fit == fit


def test_a_second_run_reuses_the_normalised_entry_and_models_lists_it(tmp_path, capsys):
    card = write_model(tmp_path / "src", "tiny", alpha_net())
    cache = tmp_path / "cache"
    assert _import(card, cache) == 0
    capsys.readouterr()
    graphs = GraphsFromSource(model_source("tiny", cache_dir=cache), cache=ArtifactCache(cache, log=None))()
    assert graphs.notes["graphs"]["hit"]  # the entry the import made is what --model tiny opens
    assert main(["models", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "imported models" in out and "tiny" in out and "https://example.org/tiny" in out and "CC0-1.0" in out
    # --force replaces the import; the registry holds the model folder and its lock only
    assert _import(card, cache, "--force") == 0
    assert _stored(cache) == [".tiny.lock", "tiny"]


def test_a_batch_baked_into_the_graph_falls_back_to_batch_1(tmp_path, capsys):
    card = write_model(tmp_path / "src", "baked", alpha_net(reshape_batch=True, batch=1))
    cache = tmp_path / "cache"
    assert _import(card, cache) == 0
    assert "a dynamic batch does not hold for this graph" in capsys.readouterr().err
    manifest = GraphsFromSource(model_source("baked", cache_dir=cache), cache=ArtifactCache(cache, log=None))().manifest
    assert manifest.max_batch == 1 and manifest.stages[0].inputs[0].shape == [1, 3, SIZE, SIZE]
    assert "runs at batch 1" in manifest.stages[0].simplify_note


# -- refusals ----------------------------------------------------------------------------------------
def test_refusals_name_the_tensors_and_both_values_and_store_nothing(tmp_path, capsys):
    cases = [
        (two_input_net(), "tiny", dict(input_name="image", output_name="alpha_out"),
         "the graph has 2 image inputs (4-D): 'image' [1, 3, 32, 32] float32, 'trimap' [1, 1, 32, 32] float32; "
         "mattrt imports single-image networks (exactly one 4-D input)"),
        (flat_input_net(), "tiny", dict(input_name="pixels", output_name="alpha_out"),
         "the graph has no 4-D input (its inputs: 'pixels' [1, 3072] float32)"),
        (alpha_net(out_channels=2), "tiny", {},
         "the alpha output 'output' [N, 2, 32, 32] float32 has 2 channels (dimension 1); an alpha output has one"),
        (alpha_net(), "tiny", dict(input_name="x"),
         "the card's input.name is 'x', but the graph's image input is 'input' [N, 3, 32, 32] float32"),
        (alpha_net(), "tiny", dict(output_name="matte"),
         "the card's output.name is 'matte', but the graph's outputs are 'output' [N, 1, 32, 32] float32, "
         "'side_features' [N, 4, 32, 32] float32"),
        (alpha_net(), "tiny", dict(size=64),
         "the card's input.size is [64, 64] (height, width), but the graph's input 'input' [N, 3, 32, 32] float32 is "
         "32 x 32 (height 32, not 64)"),
        (alpha_net(layout="NHWC"), "tiny", {},
         "the card's input.layout is 'NCHW', which reads channels from dimension 1, but that dimension of the graph's "
         "input 'input' [N, 32, 32, 3] float32 is 32; its dimension 3 is 3: is the layout NHWC?"),
        (alpha_net(), "tiny", dict(sha256="0" * 64),
         "tiny.toml pins sha256 = " + "0" * 64 + ": the file is not the graph the card describes"),
        (alpha_net(), "aim", {}, "'aim' is the name of a registered model"),
    ]
    cache = tmp_path / "cache"
    for index, (model, name, options, fragment) in enumerate(cases):
        card = write_model(tmp_path / f"src{index}", name, model, **options)
        assert _import(card, cache) == 1, fragment
        err = capsys.readouterr().err
        assert fragment in err, err
        assert err.startswith("mattrt import: error: ") and "Traceback" not in err
        assert [n for n in _stored(cache) if not n.endswith(".lock")] == []
        assert not (cache.exists() and [p for p in cache.iterdir() if "-graphs-" in p.name])


def test_an_existing_import_needs_force_and_a_missing_graph_is_named(tmp_path, capsys):
    card = write_model(tmp_path / "src", "tiny", alpha_net())
    cache = tmp_path / "cache"
    assert _import(card, cache) == 0
    assert _import(card, cache) == 1
    assert "a model named 'tiny' is already imported" in capsys.readouterr().err
    (tmp_path / "src/net.onnx").unlink()
    assert _import(card, cache, "--force") == 1
    assert "names file = 'net.onnx', which does not exist" in capsys.readouterr().err
    (tmp_path / "src/net.onnx").write_bytes(b"not onnx at all")
    assert _import(card, cache, "--force") == 1
    assert "is not a readable ONNX graph" in capsys.readouterr().err
    assert find_imported("tiny", cache) is not None  # the earlier import is untouched


def test_a_graph_tensorrt_cannot_parse_imports_and_lint_and_build_name_its_nodes(tmp_path, capsys):
    card = write_model(tmp_path / "src", "integer", alpha_net(conv_integer=True, fp16=False))
    cache = tmp_path / "cache"
    assert _import(card, cache) == 0
    err = capsys.readouterr().err
    assert "TensorRT lint found" in err and "conv1_integer" in err and "ConvInteger" in err
    out = tmp_path / "export"
    assert main(["export", "integer", "--out", str(out), "--cache-dir", str(cache)]) == 0
    manifest = Manifest.load(out)
    assert not manifest.lint["passed"]
    assert {(p["node"], p["op_type"]) for p in manifest.lint["problems"]} >= {("conv1_integer", "ConvInteger")}
    capsys.readouterr()
    assert main(["lint", str(out)]) == 1
    assert "node 'conv1_integer' (ConvInteger)" in capsys.readouterr().out
    assert main(["build", str(out)]) == 1
    err = capsys.readouterr().err
    assert "TensorRT's ONNX parser cannot take the graph(s) of 'integer'" in err
    assert "node 'conv1_integer' (ConvInteger)" in err and "nothing was built" in err
    # it runs on onnxruntime
    _, engines = open_artifacts(out)
    with engines["semantic"] as engine:
        alpha = engine.run({"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})["alpha"]
    assert alpha.shape == (1, 1, SIZE, SIZE)


def test_the_torch_backend_and_checkpoints_refuse_an_imported_graph(tmp_path):
    card = write_model(tmp_path / "src", "tiny", alpha_net())
    cache = tmp_path / "cache"
    import_card(card, cache_dir=cache, log=None)
    with pytest.raises(InputError, match="the torch backend runs a registered model's own modules; imported model "
                                         "tiny is an ONNX graph: run it with onnxruntime"):
        deployment_chain(DeploymentRequest(model="tiny", backend="torch", cache_dir=cache), log=None)
    with pytest.raises(InputError, match="--checkpoint applies to registered models"):
        model_source("tiny", checkpoint="w.pth", cache_dir=cache)
    with pytest.raises(UnknownModelError, match=r"imported models \(.*\): tiny"):
        model_source("nosuch", cache_dir=cache)
    with pytest.raises(InputError, match="--semantic-size 64 needs a graph of dynamic size"):
        model_source("tiny", semantic_size=64, cache_dir=cache)
    # a stored graph changed after the import is refused with the two digests
    stored = find_imported("tiny", cache)
    data = bytearray(stored.graph.read_bytes())
    data[-1] ^= 1
    stored.graph.write_bytes(bytes(data))
    with pytest.raises(InputError, match="the import recorded"):
        model_source("tiny", cache_dir=cache)


# -- the INT8 recipe -------------------------------------------------------------------------------
def test_the_card_calibration_section_is_the_int8_recipe(tmp_path):
    extra = ('[calibration]\ndata = "photographs"\nmethod = "percentile"\npercentile = 99.99\n'
             'keep_float = ["/side1/Conv", "/Sigmoid"]\n')
    card = write_model(tmp_path / "src", "tiny", alpha_net(), extra=extra)
    cache = tmp_path / "cache"
    _, graphs = import_card(card, cache_dir=cache, log=None)
    assert calibration_recipe(graphs.manifest) == {"calibration": "photographs", "method": "percentile",
                                                   "percentile": 99.99, "keep_float": ["/side1/Conv", "/Sigmoid"]}
    plain = write_model(tmp_path / "plain", "plain", alpha_net())
    _, graphs = import_card(plain, cache_dir=cache, log=None)
    assert calibration_recipe(graphs.manifest) == {"calibration": "photographs", "method": "entropy"}
    registered = Manifest.from_dict({**graphs.manifest.to_dict(), "network": {"output": "trimap", "fit": "letterbox"}})
    assert calibration_recipe(registered)["calibration"] == "synthetic"
    assert symmetric_quantize_options("percentile", 99.99)["CalibPercentile"] == 99.99
    with pytest.raises(InputError, match="applies to method 'percentile' only"):
        check_percentile("entropy", 99.9)
    source = parse_data_source("photographs")
    names = [name for name, image in iter_images(source)]
    assert names[:3] == ["astronaut", "chelsea", "coffee"] and len(names) == 6
    # a calibration folder relative to the card is checked at import and recorded with its full path
    folder_card = write_model(tmp_path / "folder", "folder", alpha_net(), extra='[calibration]\ndata = "calib"\n')
    with pytest.raises(InputError, match="calibration.data: calibration data .* is neither"):
        import_card(folder_card, cache_dir=cache, log=None)


def test_an_imported_model_is_a_deployment_source(tmp_path):
    """`infer --model NAME` builds the chain from the imported model (the Pipeline's run of an alpha
    network is tested with the Pipeline)."""
    card = write_model(tmp_path / "src", "tiny", alpha_net())
    cache = tmp_path / "cache"
    import_card(card, cache_dir=cache, log=None)
    source = model_source("tiny", cache_dir=cache, tile_size=256)
    assert isinstance(source, CardSource) and source.cache_key()["imported_graph_sha256"] == source.imported.sha256
    assert "provenance" not in source.cache_key()["card"]
    step = deployment_chain(DeploymentRequest(model="tiny", backend="onnxruntime", cache_dir=cache, tile_size=256),
                            log=None)
    engines = step.engines()
    assert engines.spec.semantic_output == "alpha" and engines.spec.tile_size == 256
    assert engines.notes["graphs"]["entry"].startswith(str(cache))
    # triton-repo --model NAME writes the stage model from the same cache entry
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--model", "tiny", "--out", str(repo), "--cache-dir", str(cache)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["tiny", "tiny_semantic"]


def test_int8_of_an_imported_model_takes_the_cards_percentile_and_keeps_its_nodes_in_float(tmp_path, monkeypatch):
    """The card's recipe reaches both INT8 graphs; the layer reading the input stays float (every INT8
    plan's rule) and the middle one is quantised. The calibration inputs are the semantic canvases of
    the bundled photographs, made here as the pipeline makes them (the Pipeline's run of an alpha
    network is tested with the Pipeline)."""
    extra = ('[calibration]\ndata = "photographs"\nmethod = "percentile"\npercentile = 99.99\n'
             'keep_float = ["/side1/Conv", "/Sigmoid"]\n')
    card_path = write_model(tmp_path / "src", "tiny", alpha_net(middle_conv=True), extra=extra)
    _, graphs = import_card(card_path, cache_dir=tmp_path / "cache", log=None)
    export = tmp_path / "export"
    shutil.copytree(graphs.directory, export)
    card = load_card(card_path)
    samples = [{"image": fit_to_canvas(image, card, SIZE)} for _, image in photographs()]

    def recorded(directory, source, max_samples):
        assert source.kind == "photographs"
        return {"semantic": StageFeeds("semantic", samples, len(samples), list(PHOTOGRAPHS))}

    monkeypatch.setattr(variants.calibration_feeds, "collect_stage_feeds", recorded)
    recipe = calibration_recipe(graphs.manifest)
    with pytest.raises(InputError, match="'/nowhere' are in none of the stage graphs"):
        variants.add_precisions(export, ["int8"], calibration=recipe["calibration"], method=recipe["method"],
                                percentile=recipe["percentile"], keep_float=["/nowhere"], log=None)
    manifest = variants.add_precisions(export, ["int8"], calibration=recipe["calibration"], method=recipe["method"],
                                       percentile=recipe["percentile"], keep_float=recipe["keep_float"], batch=2,
                                       log=None)
    record = manifest.stages[0].parity["int8"]["int8"]
    assert record["percentile"] == 99.99 and record["kept_float"] == ["/Sigmoid", "/side1/Conv"]
    for name in (manifest.stages[0].files["int8"], manifest.stages[0].backend_files["onnxruntime"]["int8"]):
        graph = onnx.load(str(export / name))
        producers = {out: node for node in graph.graph.node for out in node.output}
        head = next(node for node in graph.graph.node if node.name == "/side1/Conv")
        weights = producers.get(head.input[1])
        assert weights is None or weights.op_type != "DequantizeLinear", name  # float weights
        readers = [node.op_type for node in graph.graph.node if head.output[0] in node.input]
        assert "QuantizeLinear" not in readers, name  # the one-channel logits are not quantised
        weight_producer = {node.name: producers.get(node.input[1]) for node in graph.graph.node if node.op_type == "Conv"}
        assert weight_producer["/conv1/Conv"] is None or weight_producer["/conv1/Conv"].op_type != "DequantizeLinear"
        assert weight_producer["/conv2/Conv"].op_type == "DequantizeLinear", name  # the rest is INT8
