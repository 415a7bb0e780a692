"""Rate–fidelity of a small CNN trained here on scikit-learn's bundled digits: rtn, optq, optq-rd
and cerwu against NNCodec 2.1.3. Fidelity: test accuracy (540 held-out images); calibration:
256 training images. The model is trained by this script (seed 0, about 10 s of CPU).

    python bench/digits_rate_fidelity.py            # writes bench/results/digits_rate_fidelity.*
    python bench/digits_rate_fidelity.py --quick    # two λ values per method, no NNCodec
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from nncodec_rd.benchmarks.digits_cnn import (accuracy, calibration_batches, parameter_count,
                                              train_digits_cnn)
from nncodec_rd.benchmarks.rate_fidelity import METHODS, Workload, run_workload, write_report

NNCODEC_QPS = (-30, -26, -22, -20, -18, -16, -14)


def build_workload(seed: int = 0) -> Workload:
    """Train the CNN; fidelity is test accuracy in percent, the target 0.5 points below it."""
    model, data = train_digits_cnn(seed=seed)
    original = 100.0 * accuracy(model, data.x_test, data.y_test)
    return Workload(name="digits-cnn", model=model, calibration_batches=calibration_batches(data),
                    evaluate=lambda m: 100.0 * accuracy(m, data.x_test, data.y_test),
                    fidelity_name="test accuracy (%)", fidelity_target=original - 0.5,
                    description=f"DigitsCNN, {parameter_count(model):,} parameters, trained with "
                                f"seed {seed}; {len(data.y_test)} test images")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "digits_rate_fidelity"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lam-factors", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--qps", default=",".join(map(str, NNCODEC_QPS)),
                        help="NNCodec quantization parameters ('' to skip NNCodec)")
    parser.add_argument("--nncodec-python", help="python of the NNCodec environment")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 λ, no NNCodec")
    arguments = parser.parse_args(argv)
    factors = [float(f) for f in arguments.lam_factors.split(",")]
    qps = [int(q) for q in arguments.qps.split(",") if q.strip()]
    if arguments.quick:
        factors, qps = [4.0, 64.0], []
    workload = build_workload()
    os.makedirs(os.path.dirname(arguments.output) or ".", exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        report = run_workload(workload, folder, methods=arguments.methods.split(","),
                              lam_factors=factors, qps=qps,
                              nncodec_python=arguments.nncodec_python)
    write_report(report, arguments.output)
    print(open(arguments.output + ".md", encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
