"""The `mattrt` console command.

The commands are listed in mattrt.commands.INDEX (name, module, one-line help); the parser adds
every name, and the options of the one command being run, whose module is imported then. So
`mattrt --help` imports no command module (it stays instant), and `mattrt NAME` only NAME's.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator

from mattrt import __version__, commands
from mattrt.errors import MattrtError
from mattrt.runtime import threads


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default: sys.argv[1:]): every command listed, the options of the
    command argv names (its first word that is not an option) added."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="mattrt", description="Deployment runtime for automatic image matting.")
    parser.add_argument("--version", action="version", version=f"mattrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in commands.INDEX.items():
        if name != chosen:
            subparsers.add_parser(name, help=summary)
            continue
        command = commands.load(name)
        sub = subparsers.add_parser(name, help=summary, description=command.description or summary)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: OpenMP threads that wait sleep instead of spinning (runtime/threads.py).
    threads.prefer_passive_waiting()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
