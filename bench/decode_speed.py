"""Decode-speed benchmark (the module nncodec_rd/decode_speed.py, also `nncodec-rd bench decode`).

    python bench/decode_speed.py --json bench/results/decode_speed.json \
        --plot bench/results/decode_speed.png
"""

import sys

from nncodec_rd.decode_speed import main
from run_info import run_info  # bench/ is sys.path[0] when run as a script

if __name__ == "__main__":
    sys.exit(main(recorded={**run_info(), "command": "python " + " ".join(sys.argv)}))
