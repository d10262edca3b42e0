"""The ``triton`` pool: twinkle's own Triton kernels, from the local kernel repo beside this file (CUDA only).

The repo (``triton_kernels/``, in the Hub layout ``build/torch-cuda/twinkle_triton/``) is loaded through ``kernels``
when kernelizing, never when registering. It offers the stateless kernel layers ``layers.RMSNorm`` and
``layers.SiluMulMLP`` and the functions ``rms_norm(x, weight, eps)``, ``silu_mul(gate, up)`` and
``silu_and_mul(x)``. The layers serve the ``RMSNorm`` and ``SwiGLUMLP`` targets. The functions are offered for the
function targets of the same names, of which the four transformers families have none (their norms and MLPs are
layers), so they register nothing there; register them for a module of yours with
``register_function_kernel("silu_and_mul", "my_pkg.ops", repo_path=REPO_PATH, device="cuda")``.
"""

from __future__ import annotations

from pathlib import Path

from .targets import Pool

REPO_PATH = str(Path(__file__).resolve().with_name("triton_kernels"))

POOL = Pool(
    name="triton",
    summary="twinkle's Triton kernels (a local kernel repo in the Hub layout, loaded through kernels)",
    device="cuda",
    requires=(("triton", "triton"),),
    layers={
        "RMSNorm": {"repo_path": REPO_PATH, "layer_name": "RMSNorm"},
        "SwiGLUMLP": {"repo_path": REPO_PATH, "layer_name": "SiluMulMLP"},
    },
    functions={
        "rms_norm": {"repo_path": REPO_PATH},
        "silu_mul": {"repo_path": REPO_PATH},
        "silu_and_mul": {"repo_path": REPO_PATH},
    },
    notes="Candidate ids name the repo's absolute path, so they differ between installations.",
    order=30,
)
