"""``python -m sandbox``: same as ``aimlapi-video sandbox``."""

import sys

from .server import main

sys.exit(main())
