# Issue 5's one-call GPU check (fairscale/fsdp/deepspeed fp16 steps, SyncBN, RegNetY SwAV img/s + MFU).
# Here first: bash scripts/fetch_device_wheels.sh (-> .whl/, git-ignored). Then the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Under 8 min on an H100 (python budget 400 s). Table: $OUT/gpu_check.md (+ .json, log).
set -o pipefail
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/log"
timeout -k 10 450 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log"
