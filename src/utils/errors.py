"""Errors a user can cause and fix: printed as one line, no traceback."""


class UserError(RuntimeError):
    pass


def user_error_types() -> tuple[type[BaseException], ...]:
    from src.data.base import DataError
    from src.engine.checkpoint import CheckpointError
    from src.engine.optim import NonFiniteLossError

    return (UserError, DataError, CheckpointError, NonFiniteLossError)
