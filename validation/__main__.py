"""``python -m validation`` runs the ``xscale`` command line."""

import sys

from validation.cli import main

sys.exit(main())
