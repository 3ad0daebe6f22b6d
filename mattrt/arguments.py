"""Value types for command-line options, shared by every command: each refuses a bad value with
an argparse error that says what was expected (argparse turns it into `--option: message`)."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int, what: str | None = None, unit: str = "") -> Callable[[str], int]:
    """A type accepting whole numbers >= minimum. With `what` (and `unit`) the messages name them:
    "tile batch must be at least 1, got 0"; without, they say what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            prefix = f"{what}: " if what else ""
            raise argparse.ArgumentTypeError(f"{prefix}expected a whole number, got {text!r}") from None
        if value < minimum:
            if what:
                message = f"{what} must be at least {minimum}{' ' + unit if unit else ''}, got {value}"
            else:
                message = f"expected {'a positive number' if minimum == 1 else f'at least {minimum}'}, got {value}"
                message = message if minimum != 0 else f"expected zero or more, got {value}"
            raise argparse.ArgumentTypeError(message)
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


positive_int = whole_number(1)
non_negative_int = whole_number(0)

__all__ = ["non_negative_int", "positive_float", "positive_int", "whole_number"]
