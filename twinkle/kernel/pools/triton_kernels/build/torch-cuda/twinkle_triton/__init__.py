"""twinkle_triton: Triton kernels in the Hugging Face kernel-repo layout (RMSNorm, SiLU-and-mul).

Functions: ``rms_norm(x, weight, eps)``, ``silu_and_mul(x)``, ``silu_mul(gate, up)``; layers in ``layers``
(``RMSNorm``, ``SiluMulMLP``). Importing needs only torch; a call needs `triton` and CUDA tensors (or
``TRITON_INTERPRET=1``) and raises RuntimeError naming what is missing.
"""

from . import layers
from ._runtime import triton_available
from .ops import rms_norm, silu_and_mul, silu_mul

__all__ = ["layers", "rms_norm", "silu_and_mul", "silu_mul", "triton_available"]
__version__ = "1"
