"""The kit's CPU convolution, one concern in one place.

- `conv.py`: the convolution layer every model uses (`make_conv`), the kit's kernel as MindSpore Custom ops with
  their backward passes, or MindSpore's stock Conv2d where that kernel does not run.
- `build.py`: compiling `src/` once per machine into the user cache (`python -m edsr_lib.kernels build`), its
  entry-point names, and a memory probe. It imports no MindSpore.
- `src/`: the C++ (one translation unit, `conv.cpp`, split by concern into headers).

Importing this package (its algorithm names) imports neither MindSpore nor the layer: `from edsr_lib.kernels import
conv` does.
"""

from .build import ENTRY_PREFIXES

ALGORITHMS = tuple(ENTRY_PREFIXES)  # direct, winograd (F(4x4, 3x3)), winograd2x2 (F(2x2, 3x3))
CONV_ALGORITHMS = ("auto", *ALGORITHMS)  # what users choose (`conv_algorithm`, `--conv_algorithm`)
