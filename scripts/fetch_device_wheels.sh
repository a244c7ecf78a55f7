#!/usr/bin/env bash
# Fetch the Python wheels that benchmarks/gpu_check.sh installs on the lent GPU machine (which has no
# network) into .whl/ at the repo root. Run here, on the dev machine (needs PyPI):
#
#     bash scripts/fetch_device_wheels.sh            # -> .whl/*.whl, then carry [".whl"] in the `run` call
#
# .whl/ must be git-ignored (never committed) but carried with `carry: [".whl"]`; it must stay well under
# the device tool's 64 MiB limit on what travels (this script prints its size and fails above 32 MiB).
#
# What it fetches (the device image is Python 3.12 with torch 2.11, see the device KINDS.md), all pinned to the
# versions this repo's .venv runs:
#   - deepspeed and fairscale: sdists only on PyPI, built here as pure-Python wheels (DS_BUILD_OPS=0:
#     no compiled ops; bigseer uses torch optimizers under DeepSpeed, so none are JIT-built there either);
#   - their runtime deps the device image lacks: hjson, pydantic (+ pydantic-core, annotated-types,
#     typing-inspection, typing-extensions), as manylinux/py3 wheels for CPython 3.12. The other
#     Requires-Dist of deepspeed (einops, msgpack, ninja, numpy, packaging, psutil, py-cpuinfo, torch, tqdm)
#     are in the device image;
#   - simplejpeg (a binary manylinux wheel, its own libjpeg-turbo inside): bigseer.data imports it, and the
#     gpu_check "jpeg decode" row compares SampleRenderer(device="cuda") with its CPU decode path.
# Not fetched: omegaconf / antlr4 (config files), submitit (bigseer submit), fsspec's http extras: the paths
# gpu_check.py runs import none of them (it records any it did import in gpu_check.json,
# "imported_not_on_device"; tests/test_gpu_check.py asserts the CPU dry run imports none), and fsspec + aiohttp
# are in the image anyway. The check at the end lists any Requires-Dist that is neither fetched nor in the
# image's package list.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
DEST="$ROOT/.whl"
DEVICE_PY="${DEVICE_PY:-3.12}"
KINDS_MD="${KINDS_MD:-/work/.library/device/KINDS.md}"

DS_VERSION=0.19.8
FAIRSCALE_VERSION=0.4.13
# pinned together: pydantic-core must be the exact version this pydantic requires
# typing-extensions too: pydantic 2.14 needs >= 4.16 and the device image's version is not recorded
PURE_DEPS=(hjson==3.1.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)
BINARY_DEPS=(pydantic-core==2.50.5 simplejpeg==1.9.0)

rm -rf "$DEST"
mkdir -p "$DEST"

echo "== building deepspeed $DS_VERSION and fairscale $FAIRSCALE_VERSION as pure-Python wheels"
# --no-build-isolation: their setup.py imports torch; use this venv's instead of downloading another
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" \
    "deepspeed==$DS_VERSION" "fairscale==$FAIRSCALE_VERSION"

echo "== downloading runtime deps for CPython $DEVICE_PY (manylinux x86-64)"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "${PURE_DEPS[@]}" "${BINARY_DEPS[@]}"

echo "== wheels"
ls -l "$DEST"
for w in "$DEST"/*.whl; do
    case "$(basename "$w")" in
        deepspeed-*|fairscale-*)
            tag="$(basename "$w" .whl | awk -F- '{print $(NF-2)"-"$(NF-1)"-"$NF}')"
            [[ "$tag" == py3-none-any ]] || { echo "error: $(basename "$w") is not pure Python ($tag)"; exit 1; }
            ;;
    esac
done

echo "== Requires-Dist check (every fetched wheel) against the fetched wheels and the device image"
"$PY" - "$DEST" "$KINDS_MD" <<'EOF'
import re, sys, zipfile
from pathlib import Path

dest, kinds = Path(sys.argv[1]), Path(sys.argv[2])
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
fetched = {norm(w.name.split("-")[0]) for w in dest.glob("*.whl")}
image = set()
if kinds.is_file():
    m = re.search(r"Packages: (.*?)\.\s*$", kinds.read_text(), re.M)
    image = {norm(x.strip()) for x in m.group(1).split(",")} if m else set()
missing = []
for w in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
                if l.startswith("Requires-Dist:")]
    for r in reqs:
        if "extra ==" in r:
            continue
        name = norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
        where = "fetched" if name in fetched else "device image" if name in image else "MISSING"
        if where == "MISSING":
            missing.append(f"{w.name}: {r}")
        print(f"  {w.name.split('-')[0]:<18} needs {r:<40} -> {where}")
if not image:
    print(f"  (no device package list at {kinds}; 'MISSING' above only means: not fetched)")
if missing and image:
    sys.exit("error: runtime deps neither fetched nor in the device image:\n  " + "\n  ".join(missing))
EOF

size_kib="$(du -sk "$DEST" | cut -f1)"
echo "== .whl total: ${size_kib} KiB ($(ls "$DEST"/*.whl | wc -l) wheels)"
if (( size_kib > 32 * 1024 )); then
    echo "error: .whl is over 32 MiB; the device tool carries 64 MiB in all (repo included)"; exit 1
fi
git check-ignore -q .whl/x.whl 2>/dev/null \
    || echo "warning: .whl/ is not git-ignored: add '/.whl/' to .gitignore or .git/info/exclude"
