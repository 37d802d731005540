"""`python -m magvit2.cli`: the same as the `magvit2` command."""

import sys

from magvit2.cli import main

sys.exit(main())
