"""Loading weights strictly, in our own layout or in the authors' state_dict layouts.

A `CheckpointLayout` says, for each of our state_dict keys, which key(s) hold it in the
authors' files (`their_keys`). Several of their keys may hold one of ours (AIM's backbone is
stored under `resnet.*` and again under `encoder*`); those copies must agree.

Loading reads the file (unwrapping {"state_dict": ...} / {"model": ...} and `module.`
prefixes), picks the layout that matches most keys, and loads only if every key matches in
name and shape. Otherwise it raises CheckpointError listing missing keys, unexpected keys and
shape differences: nothing ever loads partially.
"""

from __future__ import annotations

import hashlib
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from mattrt.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from mattrt.models.base import MattingModel

# BatchNorm's step counter: absent from checkpoints saved before PyTorch 0.4.1 and unused in
# eval mode, so its absence is reported, never an error.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "params")


@dataclass(frozen=True)
class CheckpointLayout:
    name: str  # e.g. "JizhiziLi/AIM AimNet"
    source: str  # where the authors' code defines these keys
    their_keys: Callable[[str], Sequence[str]]  # our key -> their key(s)


NATIVE_LAYOUT = CheckpointLayout("mattrt", "this repository", lambda key: (key,))


def prefix_renamer(pairs: Sequence[tuple[str, str | Sequence[str]]]) -> Callable[[str], Sequence[str]]:
    """Build `their_keys` from (our_prefix, their_prefix or prefixes) pairs; the longest
    matching prefix wins and unmatched keys keep their name."""
    ordered = sorted(pairs, key=lambda p: len(p[0]), reverse=True)

    def their_keys(key: str) -> Sequence[str]:
        for ours, theirs in ordered:
            if key.startswith(ours):
                rest = key[len(ours):]
                targets = [theirs] if isinstance(theirs, str) else list(theirs)
                return [t + rest for t in targets]
        return [key]

    return their_keys


@dataclass
class LoadReport:
    layout: str
    sha256: str | None
    loaded: int
    tolerated_missing: list[str] = field(default_factory=list)
    duplicates_checked: int = 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a file or mapping, unwrapped and without `module.` prefixes."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
        try:
            with warnings.catch_warnings():  # torch asks to "file an issue" about the pickle protocol
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(_unreadable(path, exc)) from None
    else:
        obj = source
    for _ in range(3):  # {"state_dict": {"model": ...}} and similar nestings
        if isinstance(obj, Mapping) and not _is_flat(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_flat(obj):
        where = f" {source}" if isinstance(source, (str, Path)) else ""
        raise CheckpointError(
            f"checkpoint{where} holds no state_dict: expected a dict of tensors, possibly under one of "
            + ", ".join(repr(k) for k in _WRAPPER_KEYS)
        )
    state = {}
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


_SAVE_ADVICE = "mattrt reads PyTorch state_dict files: torch.save(model.state_dict(), path)"


def _pickle_globals(path: Path) -> list[str]:
    """The module.name globals a pickle file refers to, read without unpickling (the strings
    pushed before each STACK_GLOBAL are taken as its module and name)."""
    found, strings = [], []
    try:
        with open(path, "rb") as fh:
            for opcode, arg, _ in pickletools.genops(fh):
                if opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings.append(arg)
    except Exception:
        pass
    return list(dict.fromkeys(found))


def _file_kind(path: Path) -> str | None:
    """"zip" (torch.save's archive), "pickle" (a well-formed pickle stream: older torch.save
    files and plain pickles), or None; read without unpickling anything."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return "zip"
    if head[:1] != b"\x80":  # every pickle protocol >= 2 starts with PROTO
        return None
    try:
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):  # parses opcodes; executes nothing
                pass
    except Exception:  # malformed opcodes or an early end: not a pickle
        return None
    return "pickle"


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load (weights only) refused `path`, in mattrt's words."""
    if path.stat().st_size == 0:
        return f"checkpoint {path} is empty; {_SAVE_ADVICE}"
    kind = _file_kind(path)
    if kind is None:
        return f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle); {_SAVE_ADVICE}"
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        names = [found.group(1)] if found else (_pickle_globals(path) if kind == "pickle" else [])
        what = f" (it names {', '.join(names[:4])})" if names else ""
        return (
            f"checkpoint {path} holds objects other than tensors{what}, so it was refused for safety: mattrt "
            "loads tensors only and never runs code from a checkpoint. Save the weights alone from a copy you "
            "trust: torch.save(model.state_dict(), path)"
        )
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    reason = reason.split(". ")[0]
    return f"checkpoint {path} is damaged ({reason}): it was truncated or modified after saving; save or download it again"


def _is_flat(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def to_layout(model: torch.nn.Module, layout: CheckpointLayout) -> dict[str, torch.Tensor]:
    """Our weights under the authors' key names (every copy they store)."""
    out = {}
    for key, value in model.state_dict().items():
        for their in layout.their_keys(key):
            out[their] = value.clone()
    return out


def _match(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], layout: CheckpointLayout):
    """Map their keys onto ours; return (mapped, missing, unexpected, shape_errors, tolerated, duplicates)."""
    claimed: set[str] = set()
    mapped: dict[str, torch.Tensor] = {}
    missing, shape_errors, tolerated = [], [], []
    duplicates = 0
    for key, target in ours.items():
        candidates = [k for k in layout.their_keys(key) if k in theirs]
        claimed.update(layout.their_keys(key))
        if not candidates:
            (tolerated if key.endswith(_OPTIONAL_SUFFIXES) else missing).append(key)
            continue
        value = theirs[candidates[0]]
        if tuple(value.shape) != tuple(target.shape):
            shape_errors.append(f"{candidates[0]}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        for other in candidates[1:]:
            duplicates += 1
            if tuple(theirs[other].shape) != tuple(value.shape) or not torch.equal(theirs[other], value):
                shape_errors.append(f"{other}: differs from its copy {candidates[0]}")
        mapped[key] = value
    unexpected = [k for k in theirs if k not in claimed]
    return mapped, missing, unexpected, shape_errors, tolerated, duplicates


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def parse_checkpoint(values: list[str] | str | None) -> str | dict[str, str] | None:
    """Checkpoint values as the CLI takes them (`--checkpoint` repeated, in `export` and `infer`
    alike): one path, or PART=PATH pairs for models shipped in several files. A value is a path
    when it names an existing file, even if it contains "="."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    if len(values) == 1 and not _looks_like_part(values[0]):
        return values[0]
    parts = {}
    for value in values:
        if not _looks_like_part(value):
            raise InputError(
                f"--checkpoint {value!r}: give one file, or PART=PATH for every part "
                "(e.g. --checkpoint trimap=stn.pth --checkpoint matting=m.pth)"
            )
        part, path = value.split("=", 1)
        if part in parts:
            raise InputError(f"--checkpoint names part {part!r} twice")
        parts[part] = path
    return parts


def _looks_like_part(value: str) -> bool:
    head, sep, tail = value.partition("=")
    return bool(sep) and head.isidentifier() and bool(tail) and not Path(value).exists()


def load_checkpoint(
    model: "MattingModel",
    source: str | Path | Mapping[str, torch.Tensor],
    layouts: Sequence[CheckpointLayout] | None = None,
) -> LoadReport:
    """Load weights strictly into `model`; raise CheckpointError on any mismatch."""
    theirs = read_state_dict(source)
    ours = model.state_dict()
    candidates = list(layouts) if layouts is not None else [NATIVE_LAYOUT, *getattr(model, "checkpoint_layouts", ())]
    results = [(layout, _match(ours, theirs, layout)) for layout in candidates]
    # Most keys matched wins; on a tie the authors' layout is named (their keys may equal ours).
    layout, (mapped, missing, unexpected, shape_errors, tolerated, duplicates) = max(
        results, key=lambda r: (len(r[1][0]) - len(r[1][2]), r[0] is not NATIVE_LAYOUT)
    )
    name = getattr(getattr(model, "settings", None), "name", type(model).__name__)
    if missing or unexpected or shape_errors:
        where = f" {source}" if isinstance(source, (str, Path)) else ""
        lines = [
            f"checkpoint{where} does not fit model {name!r} (closest layout: {layout.name}, {layout.source}; "
            f"{len(mapped)} of {len(ours)} tensors matched)."
        ]
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + _preview([layout.their_keys(k)[0] for k in missing]))
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): " + _preview(unexpected))
        if shape_errors:
            lines.append(f"shape differences ({len(shape_errors)}): " + _preview(shape_errors, limit=32))
        width = getattr(getattr(model, "settings", None), "width", None)
        at_width = f" at width {width:g} (this model's width setting)" if width is not None else ""
        note = "" if width in (None, 1.0) else " The authors' checkpoints fit width 1.0 models only."
        lines.append(
            f"Is it a checkpoint of model {name!r}{at_width}?{note} Layouts tried: "
            + ", ".join(l.name for l in candidates)
        )
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, value in mapped.items():
            ours[key].copy_(value)
    if tolerated:
        warnings.warn(
            f"checkpoint for {name!r} has no {len(tolerated)} BatchNorm step counters (num_batches_tracked); "
            "they do not affect inference and keep their initial value",
            stacklevel=2,
        )
    sha = file_sha256(source) if isinstance(source, (str, Path)) else None
    return LoadReport(layout.name, sha, len(mapped), tolerated, duplicates)
