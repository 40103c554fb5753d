"""`python -m dpokit ...` = the `dpokit` command."""

import sys

from dpokit.cli import main

sys.exit(main())
