"""``python -m nncodec_rd`` works like the ``nncodec-rd`` console script."""

import sys

from .cli import main

sys.exit(main())
