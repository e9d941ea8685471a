"""`python -m nightshift ...`: the same as the `nightshift` command."""

import sys

from nightshift.cli import main

sys.exit(main())
