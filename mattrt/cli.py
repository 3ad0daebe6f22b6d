"""The `mattrt` console command.

Subcommands live next to the code they drive: each module in `COMMAND_MODULES` exposes
`register(subparsers)`, which adds its parsers with `set_defaults(run=callable)`. Registering
must stay cheap (no torch import) so that `mattrt --help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator

from mattrt import __version__
from mattrt.errors import MattrtError
from mattrt.runtime import threads

COMMAND_MODULES = [
    "mattrt.commands",
    "mattrt.calibration.cli",
    "mattrt.export.cli",
    "mattrt.infer_cli",
    "mattrt.runtime.build_cli",
    "mattrt.bench",
    "mattrt.serving.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mattrt", description="Deployment runtime for automatic image matting.")
    parser.add_argument("--version", action="version", version=f"mattrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: OpenMP threads that wait sleep instead of spinning (runtime/threads.py).
    threads.prefer_passive_waiting()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            result = args.run(args)
    except MattrtError as exc:
        print(f"mattrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mattrt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (how service managers and CI stop a program) takes the Ctrl-C path while a command
    runs, so the same cleanup happens: partial files removed, the summary of what finished written."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
