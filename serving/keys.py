"""The API key of a mattrt Triton server: where it comes from, what it must look like, a private
file for a generated one, and what an operator should know about a key they supplied.

Triton 2.51 takes the key only on its command line (`--http-restricted-api=...:mattrt-key=<key>`;
its parser reads no file and no environment variable for it), so every local user who can read
/proc/<pid>/cmdline of tritonserver can read the key (unless /proc is mounted with hidepid=2).
Hence the defaults: a fresh random key per `mattrt serve` run, in a 0600 file inside a 0700
folder, its path reported and the key never printed; a key the user supplies gets a warning that
says so (and one more when its file is readable by other users).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from mattrt.errors import InputError

KEY_ENV = "MATTRT_TRITON_KEY"
KEY_FILE_NAME = "api-key"


def read_key(key: str | None, key_file: Path | None) -> tuple[str | None, str]:
    """(key, where it came from): the given key, the key file, $MATTRT_TRITON_KEY, or (None, "")."""
    if key:
        return key, "the given key"
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read the key file {path}: {exc}") from None
        if not text:
            raise InputError(f"the key file {path} is empty")
        return text, str(path)
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV], f"${KEY_ENV}"
    return None, ""


def check_key(key: str) -> None:
    if len(key) < 16 or any(c.isspace() or c in ",:=" for c in key):
        raise InputError("the API key must have at least 16 characters and no spaces, ',', ':' or '='")


def generate_key_file(folder: Path) -> tuple[str, Path]:
    """A fresh random key in folder/api-key, created 0600 (never readable by others, whatever the umask)."""
    key = secrets.token_urlsafe(24)
    path = Path(folder) / KEY_FILE_NAME
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(key + "\n")
    return key, path


def key_warnings(source: str, key_file: Path | None) -> list[str]:
    """What an operator should know about a key they supplied (module docstring); [] for a generated key."""
    if not source:
        return []
    warnings = [(f"the API key from {source} is passed to tritonserver on its command line, which local users can "
                 "read (ps, /proc/<pid>/cmdline) unless /proc is mounted with hidepid=2: use a key that guards "
                 "nothing else, or let mattrt serve generate a fresh one per run")]
    if key_file is not None:
        try:
            mode = stat.S_IMODE(Path(key_file).stat().st_mode)
        except OSError:
            mode = 0
        if mode & 0o077:
            warnings.append(f"the key file {key_file} is readable by other users (mode {mode:04o}): "
                            f"chmod 600 {key_file}")
    return warnings


__all__ = ["KEY_ENV", "KEY_FILE_NAME", "check_key", "generate_key_file", "key_warnings", "read_key"]
