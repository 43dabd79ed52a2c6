#!/usr/bin/env bash
# The GPU check of a CUDA build, on a GPU machine without Rust: run from the repository root as
#
#     scripts/gpu-check.sh [path/to/trainer]      (default target/cuda-bin/trainer)
#
# Needs the NVIDIA driver and the CUDA 13 libraries (cudart, cublas, cublasLt, curand, nvrtc). A
# PyTorch environment ships them in its `nvidia/cu13/lib`: when python3 can import torch, that
# folder goes into LD_LIBRARY_PATH, and the PyTorch reference is timed on the GPU next to ours.
# Prints the GPU and driver, runs `trainer gpu-check` (kernels, model parity, benchmark), then the
# benchmark table with the ratios ours / PyTorch last. Bounded: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

# One outer bound over the per-step ones below (which add up to a little less).
if [[ -z ${GPU_CHECK_BOUNDED:-} ]]; then
    GPU_CHECK_BOUNDED=1 exec timeout 475 "$0" "$@"
fi

BIN=${1:-target/cuda-bin/trainer}
STEPS=${STEPS:-10}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
status=0

if [[ ! -x $BIN ]]; then
    echo "gpu-check.sh: no executable at $BIN (build it with \`cargo xtask build-cuda\`)" >&2
    exit 2
fi

echo "== GPU and driver"
if command -v nvidia-smi >/dev/null; then
    timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv \
        || echo "nvidia-smi failed"
else
    echo "nvidia-smi not found: is the NVIDIA driver installed?"
fi

# The CUDA 13 libraries of the PyTorch environment, if there is one.
have_torch=0
if timeout 30 python3 -c "import torch" 2>/dev/null; then
    have_torch=1
    cu13=$(timeout 30 python3 -c "
import os, nvidia
dirs = [os.path.join(p, 'cu13', 'lib') for p in nvidia.__path__]
print(next((d for d in dirs if os.path.isdir(d)), ''))" 2>/dev/null)
    if [[ -n $cu13 && -d $cu13 ]]; then
        export LD_LIBRARY_PATH="$cu13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "CUDA libraries: $cu13"
    else
        echo "torch has no nvidia/cu13/lib; relying on the system's CUDA libraries"
    fi
else
    echo "python3 cannot import torch: no PyTorch comparison; relying on the system's CUDA libraries"
fi
# Some PyTorch builds leave out a library the binary links (libcurand.so.10 is not in every
# torch's cu13/lib): look for each missing one in the usual places before giving up.
prefix=$(timeout 15 python3 -c "import sys; print(sys.prefix)" 2>/dev/null || true)
for lib in $(ldd "$BIN" 2>/dev/null | awk '/not found/ {print $1}'); do
    found=$(timeout 20 find ${prefix:+"$prefix"} /usr/local /opt /usr/lib -name "$lib" -print -quit 2>/dev/null)
    if [[ -n $found ]]; then
        export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "$lib: found in $(dirname "$found")"
    else
        echo "gpu-check.sh: $BIN needs $lib and it is nowhere here (pip: nvidia-curand for libcurand)" >&2
    fi
done

echo
echo "== trainer gpu-check"
timeout 240 "$BIN" gpu-check --steps "$STEPS" --bench-json "$OUT/ours.json" || status=$?
if [[ $status -eq 124 ]]; then
    echo "gpu-check.sh: trainer gpu-check ran out of its 4 minutes" >&2
fi

if [[ $have_torch -eq 1 && -s $OUT/ours.json ]]; then
    echo
    echo "== PyTorch reference on cuda"
    # Same configs as trainer::bench::CASES.
    for c in "a 18 112 32" "b 18 224 16" "c 50 224 8"; do
        read -r name depth size batch <<<"$c"
        if timeout 45 python3 tests/reference/bench/bench_pytorch.py --device cuda \
            --depth "$depth" --size "$size" --batch "$batch" --steps "$STEPS" \
            >"$OUT/torch_$name.out"; then
            tail -n 1 "$OUT/torch_$name.out" >"$OUT/torch_$name.json"
        else
            echo "PyTorch reference failed on config $name"
        fi
    done
fi

if [[ -s $OUT/ours.json ]]; then
    echo
    echo "== training benchmark on the GPU (images/second)"
    timeout 15 python3 - "$OUT" <<'EOF' || cat "$OUT/ours.json"
import json, os, sys
out = sys.argv[1]
rows = json.load(open(os.path.join(out, "ours.json")))
print(f"{'config':8}{'train':>10}{'infer':>10}{'torch train':>14}{'torch infer':>14}{'train x':>10}{'infer x':>10}")
for r in rows:
    line = f"{r['config']:8}{r['train_img_s']:10.1f}{r['infer_img_s']:10.1f}"
    path = os.path.join(out, f"torch_{r['config']}.json")
    if os.path.exists(path):
        t = json.load(open(path))
        line += (f"{t['train_img_s']:14.1f}{t['infer_img_s']:14.1f}"
                 f"{r['train_img_s'] / t['train_img_s']:10.2f}{r['infer_img_s'] / t['infer_img_s']:10.2f}")
    print(line)
print("x = ours / PyTorch; a: ResNet-18 112 px batch 32, b: ResNet-18 224 px batch 16, "
      "c: ResNet-50 224 px batch 8")
EOF
fi
if [[ $status -ne 0 ]]; then
    echo "gpu-check.sh: trainer gpu-check failed (exit $status)" >&2
fi
exit $status
