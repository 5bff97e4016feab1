"""metalcore: the per-rack sidecar of a bare-metal cloud (a Python Metal Core)."""

__version__ = "0.1.0"
