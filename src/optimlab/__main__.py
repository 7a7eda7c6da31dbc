"""``python -m optimlab``: the same as the ``optimlab`` command."""

import sys

from optimlab.cli import main

sys.exit(main())
