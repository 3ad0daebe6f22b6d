"""Suite-wide settings.

Most tests run tiny networks (many small convolutions): intra-op threads only contend for the
two cores there, so torch runs single-threaded in the test process, and the CLI's default thread
count (the cores this process may use) is pinned to 1 the same way for commands run in-process.
The artifact cache lives in one temporary folder per test session, never the user's cache.
"""

import contextlib
import os
import subprocess

import pytest
import torch

from mattrt.export.exporter import export_model
from mattrt.models import create_model
from mattrt.runtime.diagnostics import calibrated_random_weights

torch.set_num_threads(1)


def _small_tmpfs(folder, options: str):
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled to the last byte by a file named `filler` (needs root; else skipped)."""
    mount = tmp_path / "full"
    _small_tmpfs(mount, "size=64k")
    try:
        with open(mount / "filler", "wb") as stream, contextlib.suppress(OSError):
            stream.write(bytes(64 * 1024))
            stream.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty read-only tmpfs (root ignores permission bits, not a read-only mount; else skipped)."""
    mount = tmp_path / "read-only"
    _small_tmpfs(mount, "ro,size=64k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
@pytest.fixture(scope="session", autouse=True)
def isolated_artifact_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mattrt-cache")
    previous = os.environ.get("MATTRT_CACHE")
    os.environ["MATTRT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MATTRT_CACHE", None)
    else:
        os.environ["MATTRT_CACHE"] = previous


@pytest.fixture(autouse=True)
def single_thread_default(monkeypatch):
    from mattrt.runtime import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 1)


@pytest.fixture(scope="session")
def serving_export(tmp_path_factory):
    """shm_tiny with calibrated random weights (seed 2: mattes far from constant; seed 1 gives
    near-constant ones), exported once per session for the serving tests (max batch 4)."""
    directory = tmp_path_factory.mktemp("serving") / "shm_tiny"
    export_model(calibrated_random_weights(create_model("shm_tiny"), seed=2), directory, max_batch=4,
                 simplify=False, log=None)
    return directory
