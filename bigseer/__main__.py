"""``python -m bigseer`` == the ``bigseer`` command."""

import sys

from bigseer.cli import main

sys.exit(main())
