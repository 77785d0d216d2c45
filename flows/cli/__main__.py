"""`python -m flows.cli ...`: the same as the `prefsynth` console script."""

import sys

from flows.cli.commands import main

sys.exit(main())
