"""Rate–fidelity of a small CNN trained here on scikit-learn's bundled digits: rtn, optq, optq-rd,
cerwu, transform and transform+cerwu against NNCodec 2.1.3. Fidelity: test accuracy (540 held-out images); calibration:
256 training images. The model is trained by this script (seed 0, about 10 s of CPU).

    python bench/digits_rate_fidelity.py            # writes bench/results/digits_rate_fidelity.*
    python bench/digits_rate_fidelity.py --quick    # two λ values per method, no NNCodec
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

from bench.digits_cnn import (accuracy, calibration_batches, parameter_count,  # noqa: E402
                              train_digits_cnn)
from bench.rate_fidelity import Workload, bench_main  # noqa: E402

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
    return bench_main(argv, description=__doc__.split("\n\n")[0], build_workload=build_workload,
                      output=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         "digits_rate_fidelity"), lam_factors="1,2,4,8,16,32,64,128", qps=NNCODEC_QPS,
                      quick_factors=(4.0, 64.0))


if __name__ == "__main__":
    sys.exit(main())
