from .run_logger import RunLogger

__all__ = ["RunLogger"]
