# One-call GPU check (issues 16, 22): pytest -m gpu tests/gpu, then benchmarks/gpu_check.py (SwAV img/s + MFU).
# Here first: bash scripts/fetch_device_wheels.sh (-> .whl/). Then the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=400)
# Hard stop LIMIT_S (340 s) after the start: tests <= 170 s, the benchmark the rest. Report: $OUT/gpu_check.md
# (+ .json, tests.xml, log, profile trace). Benchmark only: SKIP_TESTS=1 bash benchmarks/gpu_check.sh --only throughput,profile
set -o pipefail
START=$SECONDS
LIMIT_S="${LIMIT_S:-340}"
OUT="${OUT:-/tmp/gpu_check_out}"
WHEELS="${WHEELS:-.whl}"
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl 2>&1 | tee "$OUT/log" || echo "warning: wheel install failed" | tee -a "$OUT/log"
else
    echo "warning: no $WHEELS/ (scripts/fetch_device_wheels.sh, carry .whl): no deepspeed/fairscale/simplejpeg" \
        | tee "$OUT/log"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True BIGSEER_GPU_TEST_TIMEOUT_S=120
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/log"
tests_rc=0
xml=()
if [[ -z "${SKIP_TESTS:-}" ]]; then
    timeout -k 5 170 python3 -m pytest -m gpu tests/gpu -q -rs -o addopts= -p no:cacheprovider --junitxml "$OUT/tests.xml" \
        2>&1 | tee -a "$OUT/log"
    tests_rc=$?
    xml=(--tests-xml "$OUT/tests.xml")
fi
left=$((LIMIT_S - (SECONDS - START)))
timeout -k 5 "$left" python3 benchmarks/gpu_check.py --out "$OUT" --budget-s "$((left - 20))" "${xml[@]}" "$@" \
    2>&1 | tee -a "$OUT/log"
bench_rc=$?
echo "gpu_check.sh: tests rc $tests_rc, benchmark rc $bench_rc, $((SECONDS - START))s" | tee -a "$OUT/log"
exit $((tests_rc != 0 ? tests_rc : bench_rc))
