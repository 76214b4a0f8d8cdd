"""``python -m mambapro.cli``."""

import sys

from mambapro.cli import main

sys.exit(main())
