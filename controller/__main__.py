"""``python -m controller`` is the ``amlops`` command."""

import sys

from controller.cli import main

sys.exit(main())
