"""``python -m taxcut.cli``: the same as the ``taxcut`` command."""

import sys

from taxcut.cli import main

sys.exit(main())
