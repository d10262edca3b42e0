"""autotune: time registered candidate kernels against the original code and record the winners in a profile.

``autotune(model, inputs, TuneSettings(...))`` returns the profile (see docs/profile.md); the ``twinkle-tune``
command wraps it for a MODEL_PY file and writes ``profiles/<stem>.json`` and ``reports/<stem>/``. The stages, one
module each: capture -> measure (check) -> decide -> sweep -> search -> record; ``autotune.settings`` holds every
knob (``TimerSettings``, ``DEFAULT_TOLERANCES``).
"""

from .errors import TuneError
from .settings import TuneSettings
from .tuner import autotune

__all__ = ["autotune", "TuneSettings", "TuneError"]
