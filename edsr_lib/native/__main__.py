"""`python -m edsr_lib.native build [--force]`: build the kit's CPU convolution now (see edsr_lib/native)."""

import sys

from . import main

sys.exit(main())
