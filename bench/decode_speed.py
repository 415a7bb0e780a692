"""Decode-speed benchmark (see nncodec_rd/benchmarks/decode_speed.py).

    python bench/decode_speed.py --json bench/results/decode_speed.json \
        --plot bench/results/decode_speed.png
"""

import sys

from nncodec_rd.benchmarks.decode_speed import main

if __name__ == "__main__":
    sys.exit(main())
