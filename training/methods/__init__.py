"""Training methods. Each module registers itself with ``@register_method``; import them all here."""

from training.methods import ac, anomaly, baselines, iic, infoseg, picie, stego  # noqa: F401  (each registers its method)
from training.methods.base import (
    FitContext,
    Method,
    MethodConfig,
    available_methods,
    build_method,
    get_method_class,
    register_method,
)

__all__ = [
    "FitContext",
    "Method",
    "MethodConfig",
    "available_methods",
    "build_method",
    "get_method_class",
    "register_method",
]
