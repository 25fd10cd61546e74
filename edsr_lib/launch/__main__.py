"""`python -m edsr_lib.launch standalone|distribute|eval|worker ...` (scripts/run_*.sh)."""

import sys

from . import main

sys.exit(main())
