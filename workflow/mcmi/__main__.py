"""``python -m mcmi``: the command line."""

import sys

from mcmi.cli import main

sys.exit(main())
