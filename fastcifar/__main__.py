"""`python -m fastcifar` is the `fastcifar` command."""

import sys

from fastcifar.cli import main

sys.exit(main())
