"""``python -m speedattn``: the ``speedattn`` command (see speedattn.cli)."""

import sys

from speedattn.cli import main

sys.exit(main())
