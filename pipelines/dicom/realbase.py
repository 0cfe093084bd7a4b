"""Real anatomy for ``medvit synth --base real`` (filled in below)."""


class MissingBase(RuntimeError):
    """A real base image is not installed; the message says how to install it."""
