"""EDSR super-resolution research kit on MindSpore.

`runtime` is imported first: it sets the process environment MindSpore reads when it loads.
"""

from . import runtime  # noqa: F401  (must precede every MindSpore import)
from .errors import KitError
from .images import read_image, write_image
from .imresize import imresize
from .inference import upscale
from .model import PRESETS, Architecture, build_model, count_parameters
from .runtime import setup_device
from .weights import convert, load_model, read_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "KitError",
    "PRESETS",
    "build_model",
    "imresize",
    "convert",
    "count_parameters",
    "load_model",
    "read_checkpoint",
    "read_image",
    "save_checkpoint",
    "setup_device",
    "upscale",
    "write_image",
]
