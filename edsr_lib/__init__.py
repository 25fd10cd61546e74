"""EDSR super-resolution research kit on MindSpore.

The package imports lazily (PEP 562): `from edsr_lib import metrics, imresize` loads numpy, not MindSpore. The
names below load their module on first use; MindSpore always arrives through `edsr_lib.backend`, which sets the
environment it reads first.
"""

import importlib

from .errors import KitError
from .imresize import imresize  # numpy only; eager so `edsr_lib.imresize` is the function, not its module

__version__ = "0.1.0"

# Public name -> the module that owns it.
_EXPORTS = {
    "read_image": "images",
    "write_image": "images",
    "upscale": "inference",
    "PRESETS": "model",
    "Architecture": "model",
    "build_model": "model",
    "count_parameters": "model",
    "setup_device": "runtime",
    "convert": "weights",
    "load_model": "loading",
    "read_checkpoint": "weights",
    "save_checkpoint": "weights",
}

__all__ = ["KitError", "imresize", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
