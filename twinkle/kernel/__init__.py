"""twinkle.kernel: register candidate kernels for layers and functions, and apply them to models.

Register (declarative, nothing loaded) -> ``kernelize_model`` (plan the model's targets for a device and mode;
choose per the registrations or per a tuned profile; load; validate; apply all or nothing) -> ``kernel_report``
/ ``unkernelize``. ``reset()`` undoes every patch and forgets every registration.
"""

from .config import register_kernels
from .errors import KernelError
from .kernelize import kernel_report, kernelize_model, reset, unkernelize
from .pools import use_pools
from .registry import register_function_kernel, register_layer_kernel

__version__ = "0.1.0"

__all__ = [
    "register_layer_kernel",
    "register_function_kernel",
    "register_kernels",
    "use_pools",
    "kernelize_model",
    "unkernelize",
    "kernel_report",
    "reset",
    "KernelError",
]
