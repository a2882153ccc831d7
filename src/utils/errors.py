"""Errors a user can cause and fix: printed as one line, no traceback.

Contract: every such error subclasses ``UserError`` (``DataError`` for data on disk,
``WeightsFileError`` for a missing or unreadable weights / checkpoint file, ``CheckpointError``
for a checkpoint that does not fit, ``NonFiniteLossError`` for a run that diverged, ...); the
entry point catches ``user_error_types()`` and prints the message, which names the file or key
and what to do. This module imports nothing of ours, so any layer may raise these.
"""


class UserError(RuntimeError):
    """A mistake the user can fix (missing data, bad file, incompatible config)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types the entry point reports as one line (all subclass ``UserError``)."""
    return (UserError,)
