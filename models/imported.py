"""The imported models: ONNX networks registered with a model card (`mattrt import`, `mattrt fetch`).

    model = imported_candidate(load_card("isnet.toml"))   # the user's card and graph, checked, not stored
    stored = store_imported(model, cache_dir=None)       # $MATTRT_CACHE/models/isnet/
    find_imported("isnet")                                # -> ImportedModel, or None
    list_imported()                                       # every imported model (and the damaged ones)

Each imported model is one folder `<cache>/models/<name>/` holding `card.toml` (the card, its
`file` renamed to the stored graph), `<name>.onnx` (the graph as given, byte for byte) and
`import.json` (the graph's SHA-256 and size, when and from where it was imported, the mattrt
version). The folder is written under a hidden temporary name beside it and renamed into place
under a per-name file lock, so an interrupted import leaves nothing that looks like a model and
two concurrent imports do not mix; `--force` replaces an earlier import of the same name (and
nothing else). A name that is also a registered model is refused, so `--model NAME` always means
one thing. The graph is normalised for deployment by the deployment chain, into the artifact
cache (deploy/sources.py CardSource), not here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from mattrt import __version__
from mattrt.errors import InputError
from mattrt.models.cards import CARD_FILE, ModelCard, load_card, write_card
from mattrt.models.checkpoints import file_sha256
from mattrt.models.registry import list_models
from mattrt.paths import cache_dir as resolve_cache_dir
from mattrt.paths import new_directory, swap_in

IMPORTED_FOLDER = "models"
RECORD_FILE = "import.json"
LOCK_TIMEOUT_SECONDS = 600.0
Log = Callable[[str], None]


@dataclass(frozen=True)
class ImportedModel:
    """A card and its graph: stored in the registry (`directory`), or a candidate read from the
    user's files (`directory` None)."""

    card: ModelCard
    graph: Path
    sha256: str
    size: int
    directory: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def stored(self) -> bool:
        return self.directory is not None

    def describe(self) -> str:
        where = self.directory if self.directory is not None else self.card.path
        return f"imported model {self.name!r} ({where})"


def imported_root(cache_dir: str | Path | None = None) -> Path:
    """The folder that holds the imported models: <cache directory>/models."""
    return resolve_cache_dir(cache_dir) / IMPORTED_FOLDER


def imported_candidate(card: ModelCard) -> ImportedModel:
    """The card's graph, hashed and checked against the card's pin; nothing is stored."""
    graph = card.graph_path
    if not graph.is_file():
        what = "is a folder" if graph.is_dir() else "does not exist"
        raise InputError(f"{card.describe()} names file = {card.file!r}, which {what} ({graph}; a relative path is "
                         "relative to the card's folder)")
    digest = file_sha256(graph)
    if card.sha256 and digest != card.sha256:
        raise InputError(f"{graph} has SHA-256 {digest}, but {card.describe()} pins sha256 = {card.sha256}: the file "
                         "is not the graph the card describes (nothing was imported)")
    return ImportedModel(card, graph, digest, graph.stat().st_size)


def check_name(name: str, cache_dir: str | Path | None = None, *, force: bool = False) -> None:
    """InputError when `name` is a registered model, or already imported (unless `force`)."""
    if name in list_models(include_variants=True):
        raise InputError(f"{name!r} is the name of a registered model (see `mattrt models --all`); give the card "
                         "another name (its `name` key) so that --model NAME means one thing")
    folder = imported_root(cache_dir) / name
    if (folder.exists() or folder.is_symlink()) and not force:
        raise InputError(f"a model named {name!r} is already imported ({folder}); pass --force to replace it, or give "
                         "the card another name")


def _lock(root: Path, name: str) -> FileLock:
    return FileLock(str(root / f".{name}.lock"), timeout=LOCK_TIMEOUT_SECONDS)


def _copy_hashing(source: Path, target: Path) -> str:
    """Copy `source` to the new file `target`; the SHA-256 of the bytes written."""
    digest = hashlib.sha256()
    with open(source, "rb") as read, open(target, "xb") as write:
        for chunk in iter(lambda: read.read(1 << 22), b""):
            digest.update(chunk)
            write.write(chunk)
    return digest.hexdigest()


def _check_replaceable(folder: Path) -> None:
    if folder.is_symlink() or not folder.is_dir() or not (folder / RECORD_FILE).is_file():
        raise InputError(f"{folder} is not a folder that `mattrt import` wrote (no {RECORD_FILE}), so --force does "
                         "not replace it and nothing was deleted; move it away")


def store_imported(model: ImportedModel, cache_dir: str | Path | None = None, *, force: bool = False,
                   semantic_size: int | None = None, log: Log | None = print) -> ImportedModel:
    """Copy the card and its graph into the registry (module docstring) and return the stored model.
    `semantic_size`: the canvas a graph of dynamic size was imported at (what --model NAME runs)."""
    log = log or (lambda message: None)
    root = imported_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {root}: {exc.strerror or exc}; choose another --cache-dir") from None
    name = model.name
    folder = root / name
    with _lock(root, name):
        check_name(name, cache_dir, force=force)
        if folder.exists() or folder.is_symlink():
            _check_replaceable(folder)
        staging = new_directory(root, f".{name}.importing-")
        try:
            graph_name = f"{name}.onnx"
            digest = _copy_hashing(model.graph, staging / graph_name)
            if digest != model.sha256:
                raise InputError(f"{model.graph} changed while it was being imported (SHA-256 {digest}, was "
                                 f"{model.sha256}); nothing was imported")
            card = replace(model.card, file=graph_name, sha256=digest, path=staging / CARD_FILE)
            origin = ("`mattrt fetch`" if model.card.provenance.get("package") else str(model.card.path))
            write_card(card, staging / CARD_FILE, header=f"Imported by mattrt {__version__} from {origin}")
            record = {
                "name": name, "graph": graph_name, "sha256": digest, "bytes": model.size,
                "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "mattrt": __version__, "card_from": str(model.card.path) if model.card.path else None,
                "graph_from": str(model.graph),
            }
            if semantic_size is not None:
                record["semantic_size"] = int(semantic_size)
            (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")  # last: the folder is complete
            _publish(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"imported {name!r} into {folder}")
    return load_imported(folder)


def _publish(staging: Path, folder: Path) -> None:
    retired = swap_in(staging, folder)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def load_imported(folder: Path) -> ImportedModel:
    """The imported model stored in `folder`; InputError when it is damaged."""
    hint = f"import it again (mattrt import CARD --force, or mattrt fetch {folder.name} --force)"
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"imported model folder {folder} has no readable {RECORD_FILE} ({exc}); {hint}") from None
    card = load_card(folder / CARD_FILE)
    graph = folder / card.file
    if not graph.is_file():
        raise InputError(f"imported model {card.name!r}: its graph {graph} is missing; {hint}")
    size = graph.stat().st_size
    if size != record.get("bytes") or card.sha256 != record.get("sha256"):
        raise InputError(f"imported model {card.name!r}: {graph} has {size} bytes, the import recorded "
                         f"{record.get('bytes')} (or the card's sha256 was edited); {hint}")
    return ImportedModel(card, graph, record["sha256"], size, folder, record)


def verify_imported(model: ImportedModel) -> None:
    """InputError unless the stored graph still has the SHA-256 recorded at import."""
    digest = file_sha256(model.graph)
    if digest != model.sha256:
        raise InputError(f"imported model {model.name!r}: {model.graph} has SHA-256 {digest}, the import recorded "
                         f"{model.sha256}: the file was changed or damaged; import it again "
                         f"(mattrt import CARD --force)")


def find_imported(name: str, cache_dir: str | Path | None = None) -> ImportedModel | None:
    """The imported model called `name`, or None when there is none."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        return None
    folder = imported_root(cache_dir) / name
    if not folder.is_dir():
        return None
    return load_imported(folder)


def list_imported(cache_dir: str | Path | None = None) -> tuple[list[ImportedModel], list[tuple[str, str]]]:
    """The imported models, and (name, reason) for each damaged folder."""
    root = imported_root(cache_dir)
    models, damaged = [], []
    if not root.is_dir():
        return models, damaged
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            models.append(load_imported(folder))
        except InputError as exc:
            damaged.append((folder.name, str(exc)))
    return models, damaged


__all__ = ["IMPORTED_FOLDER", "ImportedModel", "RECORD_FILE", "check_name", "find_imported", "imported_candidate",
           "imported_root", "list_imported", "load_imported", "store_imported", "verify_imported"]
