"""`python -m edsr_lib.kernels build [--force]`: build the kit's CPU convolution now (see edsr_lib/kernels/build.py)."""

import sys

from .build import main

sys.exit(main())
