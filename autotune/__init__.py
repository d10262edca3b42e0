"""autotune: time registered candidate kernels against the original code and record the winners in a profile.

``autotune(model, inputs, TuneSettings(...))`` returns the profile (see docs/profile.md); the ``twinkle-tune``
command wraps it for a MODEL_PY file and writes ``profiles/<stem>.json`` and ``reports/<stem>/``.
"""

from .errors import TuneError
from .match import DEFAULT_TOLERANCES
from .measure import TimerSettings
from .tuner import TuneSettings, autotune

__all__ = ["autotune", "TuneSettings", "TimerSettings", "TuneError", "DEFAULT_TOLERANCES"]
