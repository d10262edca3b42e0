"""Function kernels, the seed's import path: ``register_function_kernel`` records a candidate for
``target_module.func_name`` (nothing is imported); ``apply_function_kernel`` (or ``kernelize_model``) patches the
attribute on the module, and ``unkernelize`` restores it.
"""

from .kernelize import apply_function_kernel
from .registry import register_function_kernel

__all__ = ["register_function_kernel", "apply_function_kernel"]
