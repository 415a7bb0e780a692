#!/usr/bin/env bash
# A separate environment for NNCodec 2.1.3, the peer the benchmarks compare against.
# NNCodec compiles a C++ extension (about 2 minutes) and pins numpy<2, so it cannot share the
# project's .venv. Its torchvision requirement would replace the CPU torch with a multi-GB CUDA
# build and does not import beside it, so nncodec is installed without it; the benchmark stubs
# torchvision while importing nncodec (only its dataset helpers use it).
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.venv-nncodec
python3 -m venv "$ENV"
"$ENV/bin/pip" install -q --upgrade pip
"$ENV/bin/pip" install -q torch==2.13.0          # the CPU wheel on this machine's disk
"$ENV/bin/pip" install -q "numpy<2" Click h5py opencv-python-headless pandas ptflops pybind11 \
    scikit-learn torchmetrics tqdm torch==2.13.0
"$ENV/bin/pip" install -q --no-deps nncodec==2.1.3
echo "NNCodec environment ready: $ENV/bin/python"
