from .schema import register_configs

__all__ = ["register_configs"]
