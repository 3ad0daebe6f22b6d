"""Suite-wide settings.

Most tests run tiny networks (many small convolutions): intra-op threads only contend for the
two cores there, so torch runs single-threaded in the test process.
"""

import contextlib
import subprocess

import pytest
import torch

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
