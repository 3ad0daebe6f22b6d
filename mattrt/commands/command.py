"""What a command module registers for each command it provides (see mattrt/commands/__init__.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the command's options
    run: Callable[[argparse.Namespace], int]  # the exit status
    description: str = ""  # shown by `mattrt NAME --help` (default: the one-line help)


__all__ = ["Command"]
