#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU where the project's packages import:
# the CUDA tests, the main command on the GPU, and the GPU benchmark (with training).
# Usage: bash bench/gpu_check.sh OUT_DIR   (PYTHON=... to choose the interpreter)
# Needs MNIST (FORMDIGITS_DATA or ../shared/datasets) for the benchmark; ~6 minutes.
set -u
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/smi.txt"
$py -c "import torch, torchvision, cv2, prefect; print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'opencv', cv2.__version__, 'prefect',
prefect.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/smi.txt"
timeout 180 $py -m pytest tests/test_cuda.py -v -p no:cacheprovider 2>&1 | tee "$out/test_cuda.log"
rm -rf /tmp/gpu-results
{ time timeout 150 $py -m flows.cli run sample_scans --out /tmp/gpu-results --device cuda; } \
  2>&1 | tail -25 | tee "$out/run.log"
timeout 330 $py -m bench.perf_gpu --train --train-limit-s 150 --out "$out/results_gpu.json" \
  2>&1 | tail -5
