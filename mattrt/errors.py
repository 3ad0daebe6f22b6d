"""The exceptions mattrt raises for problems a user can fix.

Every message says what was wrong and what to do; the CLI prints them without a traceback.
"""


class MattrtError(Exception):
    """Base class of the errors the CLI reports as a one-line message."""


class UnknownModelError(MattrtError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(MattrtError, ValueError):
    """An input (tensor, image, option) with the wrong shape, dtype, range or value."""


class CheckpointError(MattrtError):
    """A checkpoint that cannot be loaded strictly into the requested model."""


class MissingDependencyError(MattrtError, RuntimeError):
    """An optional dependency (backend, device, tool) that this machine does not have."""
