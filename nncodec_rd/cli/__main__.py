"""``python -m nncodec_rd.cli``, as it worked when the command line was one module."""

import sys

from . import main

sys.exit(main())
