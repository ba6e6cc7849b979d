#!/usr/bin/env bash
# Install fedkube (with PyTorch, the example's data package and the dashboard) and run the
# MNIST example on the embedded defaults: 8 simulated non-IID clients, 2
# combiners, a reducer, 10 rounds. Extra arguments go to `fedkube run`
# (e.g. --workdir DIR, --rounds N, --fresh).
set -euo pipefail
FEDKUBE_EXTRAS=examples,dashboard source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
echo "==> fedkube run examples/mnist/job.yaml $*"
fedkube run examples/mnist/job.yaml "$@"
echo
echo "Inspect it with:  $FEDKUBE_VENV/bin/fedkube status mnist"
echo "Fetch the model:  $FEDKUBE_VENV/bin/fedkube models pull mnist -o mnist.safetensors"
echo "Watch it:         $FEDKUBE_VENV/bin/fedkube dashboard   (http://127.0.0.1:8501/)"
