# Issue 16's one-call GPU check (benchmarks/gpu_check.py: backends + fp16 overflow skips, fairscale checkpoint
# -> fsdp load -> export, SyncBN, nvjpeg decode, regnety_128gf/256gf SwAV img/s + MFU, profile if MFU < 35%).
# Here first: bash scripts/fetch_device_wheels.sh (-> .whl/, git-ignored). Then the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=400)
# python budget 300 s, hard stop 350 s (+ ~20 s install/start). Report: $OUT/gpu_check.md (+ .json, log, trace).
# Rerun part of it: bash benchmarks/gpu_check.sh --only throughput,profile --budget-s 200
set -o pipefail
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee "$OUT/log" || echo "warning: wheel install failed" | tee -a "$OUT/log"
else
    echo "warning: no .whl/ (run scripts/fetch_device_wheels.sh, carry .whl): deepspeed/fairscale/jpeg rows skip" \
        | tee "$OUT/log"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/log"
timeout -k 10 350 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log"
