#!/usr/bin/env bash
# Every GPU figure of issue 16 in one run, printed as tables as they are measured (at most 9 minutes: each
# step has its own time limit, 540 s in all, so that a slow compile cannot eat the rest).
#
# On the machine with the project's venv first:   benchmarks/gpu_prepare.sh .venv/bin/python
# which fills the ignored .gpu/ (38 MB of pure-Python packages + the tokenizer vocabulary, 20 MB conformance
# reference); carry .gpu to the GPU machine (which needs python3 with CUDA torch, torchvision, numpy and
# pillow) and run:                                 benchmarks/gpu_run.sh
# Without a GPU it says so and runs the tiny smoke path (benchmarks/gpu_checks.py --smoke) instead.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src
export OPENGLIP_REFERENCE=${OPENGLIP_REFERENCE:-$PWD/.gpu/reference}
export PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false
run() { "$PY" -u benchmarks/_gpu_launch.py "$@"; }
step() {  # step SECONDS SCRIPT ARGS...: run one part, report a failure or a timeout, go on
  local limit=$1; shift
  echo; echo "### $* (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PY" -u benchmarks/_gpu_launch.py "$@"
  local rc=$?
  [ $rc -eq 124 ] && echo "!!! timed out after ${limit} s: $*"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "!!! failed (exit $rc): $*"
  return 0
}
run --env || exit 1
if ! run --has-gpu; then
  echo "no GPU: running the tiny smoke path only"
  step 240 benchmarks/gpu_checks.py --smoke
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. eager bf16 speed: GLIP-T batch 1 and 8, Grounding DINO-T and the ratio, the training step, the loader
step 150 benchmarks/speed.py --repeats 10 --loader-workers 8
# 2. outputs: CPU vs CUDA fp32 (tiny, GLIP-T); fp32 vs official, bf16 vs fp32, compiled vs eager (GLIP-T)
step 40 benchmarks/gpu_check.py
step 150 benchmarks/gpu_checks.py
# 3. compiled inference: inductor default mode and CUDA graphs ("reduce-overhead"), batch 1, then batch 8
step 200 benchmarks/speed.py --skip gdino train loader --repeats 10 --compile default reduce-overhead
