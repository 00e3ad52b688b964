#!/usr/bin/env bash
# The GPU checks and benchmarks of one lent-GPU session, in one go (repository root, CUDA machine).
# Packages the machine lacks travel as wheels in .whl/ (diffusers, kornia, kornia_rs, basicsr), made here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 kornia==0.9.0 kornia_rs==0.2.0
#   .venv/bin/python -m pip wheel --no-deps --no-build-isolation -w .whl basicsr==1.4.2
# and carried with the call (carry: [".whl"]). The machine's own torch (2.11 when this ran) is used;
# logs go to $OUT (default /tmp/headsup-gpu). Each step has its own time limit; a failing step
# does not stop the others. Figures are copied into benchmarks/RESULTS.md by hand.
set -u
OUT=${OUT:-/tmp/headsup-gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, diffusers, kornia, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'kornia', kornia.__version__, 'peft', peft.__version__)"

step() {  # step NAME SECONDS command...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: rc $? in $((SECONDS - start)) s"
    grep -v '^\s*$' "$OUT/$name.log" | tail -n 2 | cut -c1-3000
}

# `gpu_session.sh` runs everything (about 9 minutes on an H200); `gpu_session.sh overhead` only the
# tests and the per-call overhead rows. RESULTS.md's GPU figures came from these steps, in two
# calls of the device tool (the compile row first ran out of its step's time inside `infer`).
step gpu_tests 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
if [ "${1:-all}" = all ]; then
    for batch in 256 1024 2048; do
        step "deg256_b$batch" 60 python3 benchmarks/degradation_throughput.py --device cuda --size 256 \
            --images $((batch < 1024 ? 4096 : 8192)) --batch $batch --reference-images 64
    done
    step deg512_b256 60 python3 benchmarks/degradation_throughput.py --device cuda --size 512 --images 2048 \
        --batch 256 --reference-images 32
    step infer 180 python3 benchmarks/inference_latency.py --device cuda --sizes 512 1024 2048 --repeats 10 \
        --budget-gb 8 --extras channels_last
    step infer4k 110 python3 benchmarks/inference_latency.py --device cuda --sizes 3840x2160 --repeats 2 --budget-gb 8
fi
step infer_overhead 200 python3 benchmarks/inference_latency.py --device cuda --sizes 512 1024 --repeats 20 \
    --skip-untiled-grid --extras cuda_graphs bf16_weights split_group_norm compile
step profile 120 python3 benchmarks/profile_inference.py --rows 30
step profile_split 120 python3 benchmarks/profile_inference.py --rows 30 --split-group-norm
