"""The tuner's error: a message for the user naming the file or the cause."""


class TuneError(Exception):
    """Tuning cannot go on (bad MODEL_PY, nothing to tune, device not present, bad settings)."""
