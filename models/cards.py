"""Model cards: a small TOML file that describes an external single-image matting network in ONNX.

    card = load_card("isnet.toml")        # validated against card.schema.json (beside this module)
    card.graph_path                       # the graph, relative to the card's folder
    card.normalization()                  # the manifest's normalisation (mattrt feeds RGB in [0, 1])
    write_card(card, "out/isnet.toml")    # TOML again (tomli-w)

The format (README: "Model cards"; every key is documented there):

    name = "isnet"
    file = "isnet.onnx"              # relative to the card
    sha256 = "b6e8..."               # optional pin: a graph with another digest is refused
    source = "https://github.com/xuebinqin/DIS"
    license = "MIT"
    [input]
    name = "input"
    layout = "NCHW"                  # NCHW (default) | NHWC
    channel_order = "RGB"            # RGB (default) | BGR
    size = [1024, 1024]              # height, width; leave out for a graph of dynamic size
    fit = "stretch"                  # stretch | letterbox
    scale = 255.0                    # x / scale, then (x - mean) / std per channel (x: pixel values 0..255)
    mean = [0.5, 0.5, 0.5]
    std = [1.0, 1.0, 1.0]
    [output]
    name = "output"
    activation = "none"              # none | sigmoid
    [calibration]                    # optional: the INT8 recipe
    [refine]                         # optional: settings of the full-resolution refinement

A card is read only after it validates; an error names the key (`input.mean: ...`) and what it
must be. Nothing is filled in silently: the keys with defaults (layout, channel_order) say so
in the README, and `to_dict()` writes every value out, defaults included.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.manifest import checked_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport of the same parser
    import tomli as tomllib

tomli_w = lazy_import("tomli_w")

SCHEMA_FILE = Path(__file__).with_name("card.schema.json")
CARD_FILE = "card.toml"  # the name a stored card gets (models/imported.py)
DEFAULT_LAYOUT = "NCHW"
DEFAULT_CHANNEL_ORDER = "RGB"
# Pixel values the runtime reads are scaled to [0, 1] (x / 255); a card's scale is for values 0..255.
PIXEL_RANGE = 255.0
_MAX_REPORTED = 5


@dataclass(frozen=True)
class CardInput:
    name: str
    fit: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = DEFAULT_LAYOUT
    channel_order: str = DEFAULT_CHANNEL_ORDER
    size: tuple[int, int] | None = None  # (height, width); None: the graph's size is dynamic

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "layout": self.layout, "channel_order": self.channel_order}
        if self.size is not None:
            data["size"] = list(self.size)
        data.update(fit=self.fit, scale=self.scale, mean=list(self.mean), std=list(self.std))
        return data


@dataclass(frozen=True)
class CardOutput:
    name: str
    activation: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "activation": self.activation}


@dataclass(frozen=True)
class ModelCard:
    """A validated card (module docstring). `path` is where it was read from (None: made in memory)."""

    name: str
    file: str
    source: str
    license: str
    input: CardInput
    output: CardOutput
    sha256: str | None = None
    license_notes: str = ""
    description: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    @property
    def graph_path(self) -> Path:
        """The graph file the card names (relative paths are relative to the card's folder)."""
        return self.folder / self.file

    def to_dict(self) -> dict[str, Any]:
        """The card as TOML holds it, every default written out (what manifests and cache keys record)."""
        data: dict[str, Any] = {"name": self.name, "file": self.file}
        if self.sha256:
            data["sha256"] = self.sha256
        data.update(source=self.source, license=self.license)
        if self.license_notes:
            data["license_notes"] = self.license_notes
        if self.description:
            data["description"] = self.description
        data["input"] = self.input.to_dict()
        data["output"] = self.output.to_dict()
        for key in ("calibration", "refine", "provenance"):
            if getattr(self, key):
                data[key] = json.loads(json.dumps(getattr(self, key)))
        return data

    def normalization(self) -> dict[str, Any]:
        """The manifest's normalisation: the runtime feeds x01 = x / 255 and computes
        (x01 - mean') / std'; the card's network wants (x / scale - mean) / std, so
        mean' = mean * scale / 255 and std' = std * scale / 255."""
        factor = self.input.scale / PIXEL_RANGE
        return {
            "channel_order": self.input.channel_order,
            "mean": [float(m) * factor for m in self.input.mean],
            "std": [float(s) * factor for s in self.input.std],
            "input_range": [0.0, 1.0],
        }

    def describe(self) -> str:
        return f"model card {self.path}" if self.path is not None else f"model card {self.name!r}"


# -- reading ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def card_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


@functools.lru_cache(maxsize=1)
def _validator():
    return checked_validator(card_schema())


def _where(error) -> str:
    path = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(path).replace(".[", "[") or "top level"


def _describe(error) -> str:
    where = _where(error)
    expected = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        key = f"{where}.{missing}" if where != "top level" else missing
        return f"{key}: missing (required)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if where != "top level" else ""
        return (f"{', '.join(prefix + k for k in unknown)}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"(known here: {', '.join(allowed)})")
    shown = repr(error.instance)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    if expected:
        return f"{where}: {shown} is not {expected}"
    return f"{where}: {error.message[:200]}"


def validate_card_data(data: Any, where: str = "model card") -> None:
    """InputError naming each key (up to five) where `data` breaks the card schema, or a rule the
    schema cannot say (percentile only with method "percentile")."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    shown = [_describe(e) for e in errors[:_MAX_REPORTED]]
    if not errors:
        calibration = data.get("calibration", {})
        if "percentile" in calibration and calibration.get("method") != "percentile":
            shown.append(f"calibration.percentile: applies to method = \"percentile\" only; the card's method is "
                         f"{calibration.get('method', 'not set')!r}")
        for key in ("scale", "mean", "std"):
            value = data["input"][key]
            if not all(math.isfinite(float(v)) for v in (value if isinstance(value, list) else [value])):
                shown.append(f"input.{key}: {value!r} holds a value that is not a finite number")
    if shown:
        more = f" (and {len(errors) - _MAX_REPORTED} more)" if len(errors) > _MAX_REPORTED else ""
        raise InputError(f"{where} is not a valid model card: " + "; ".join(shown) + more
                         + ". The card format is in the README (\"Model cards\")")


def card_from_dict(data: Mapping[str, Any], path: str | Path | None = None) -> ModelCard:
    """A ModelCard from the parsed TOML (validated first)."""
    where = f"{path}" if path is not None else "model card"
    validate_card_data(data, where)
    inp, out = data["input"], data["output"]
    return ModelCard(
        name=data["name"], file=data["file"], source=data["source"], license=data["license"],
        input=CardInput(
            name=inp["name"], fit=inp["fit"], scale=float(inp["scale"]),
            mean=tuple(float(v) for v in inp["mean"]), std=tuple(float(v) for v in inp["std"]),
            layout=inp.get("layout", DEFAULT_LAYOUT), channel_order=inp.get("channel_order", DEFAULT_CHANNEL_ORDER),
            size=tuple(int(v) for v in inp["size"]) if "size" in inp else None,
        ),
        output=CardOutput(name=out["name"], activation=out["activation"]),
        sha256=data.get("sha256"), license_notes=data.get("license_notes", ""),
        description=data.get("description", ""), calibration=dict(data.get("calibration", {})),
        refine=dict(data.get("refine", {})), provenance=dict(data.get("provenance", {})),
        path=Path(path) if path is not None else None,
    )


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a TOML card; InputError naming the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the model card's TOML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"model card {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read model card {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"model card {path} is not UTF-8 text (a card is a TOML file)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"model card {path} is not valid TOML: {exc}") from None
    return card_from_dict(data, path)


# -- writing ------------------------------------------------------------------------------------
def card_text(card: ModelCard, header: str = "") -> str:
    """The card as TOML (tomli-w), every value written out; `header` becomes leading comments."""
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + tomli_w.dumps(card.to_dict())


def write_card(card: ModelCard, path: str | Path, header: str = "") -> Path:
    """Write the card to `path` (which must not exist: cards are written into fresh folders)."""
    path = Path(path)
    with open(path, "x", encoding="utf-8") as stream:
        stream.write(card_text(card, header))
    return path


__all__ = ["CARD_FILE", "CardInput", "CardOutput", "ModelCard", "card_from_dict", "card_schema", "card_text",
           "load_card", "validate_card_data", "write_card"]
