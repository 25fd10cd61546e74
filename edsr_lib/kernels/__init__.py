"""The kit's CPU convolution, one concern in one place.

- `conv.py`: the convolution layer every model uses (`make_conv`), the kit's kernel as MindSpore Custom ops with
  their backward passes, or MindSpore's stock Conv2d where that kernel does not run.
- `build.py`: compiling `src/` once per machine into the user cache (`python -m edsr_lib.kernels build`), its
  entry-point names, and a memory probe. It imports no MindSpore.
- `src/`: the C++ (one translation unit, `conv.cpp`, split by concern into headers).

Importing this package imports neither MindSpore nor the layer: `from edsr_lib.kernels import conv` does.
"""
