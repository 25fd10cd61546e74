"""`python -m edsr_lib.cli`: the `edsr` command."""

import sys

from . import main

sys.exit(main())
