#!/usr/bin/env bash
# The segment benchmark on CUDA, for a lent GPU machine (no internet, no Rust toolchain there):
# onnxruntime-gpu 1.31.1 (CUDA 13 build, PyPI) for both sides, the Rust sliding window
# (release `segment_bench` example, built here) against bench/segment/reference.py with
# --provider cuda, 3 runs each, plus one CPU run of each on all cores; label maps compared.
#
# Expects, in the repo's git-ignored .gpu/ folder (the wheel is carried in 52 MiB parts, since one
# call carries at most 64 MiB; earlier calls copy parts 00–03 to /tmp/parts):
#   whl.part04                         last part of onnxruntime_gpu-1.31.1-cp312-…-manylinux_2_28_x86_64.whl
#   segment_bench                      cargo build --release -p iris-onnxruntime --example segment_bench (stripped)
#   ct.nii.gz                          ../shared/data/totalseg/example_ct_sm.nii.gz
#   nibabel-5.4.2-py3-none-any.whl
# The machine provides CUDA 13, cuDNN 9, numpy and onnx. Results go to $OUT (the device tool's).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
cp .gpu/whl.part04 /tmp/parts/
W=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl; cat /tmp/parts/whl.part0* > "$W"
echo "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  $W" | sha256sum -c || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W" .gpu/nibabel-5.4.2-py3-none-any.whl || exit 1
export PYTHONPATH=/tmp/site
export ORT_DYLIB_PATH=/tmp/site/onnxruntime/capi/libonnxruntime.so.1.31.1
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
nproc
python3 -c "import onnxruntime as o; print('python onnxruntime', o.__version__, o.get_available_providers())"
python3 scripts/models/make_models.py unet --out /tmp/unet --spacing 1.5 1.5 1.5 || exit 1
T=/usr/bin/time
for i in 1 2 3; do
  $T -f "rust_gpu $i wall %e s peak %M KiB" .gpu/segment_bench --volume .gpu/ct.nii.gz --model /tmp/unet --out /tmp/rust_gpu.nii.gz --device gpu --timings "$OUT/rust_gpu_$i.json" 2>>"$OUT/rust_gpu.log" || { tail -20 "$OUT/rust_gpu.log"; exit 1; }
  tail -1 "$OUT/rust_gpu.log"
done
grep -i "execution provider\|models run" "$OUT/rust_gpu.log" | head -3
for i in 1 2 3; do
  $T -f "python_gpu $i wall %e s peak %M KiB" python3 bench/segment/reference.py --volume .gpu/ct.nii.gz --model /tmp/unet --out /tmp/py_gpu.nii.gz --provider cuda --threads 16 --timings "$OUT/py_gpu_$i.json" >/dev/null || exit 1
done
$T -f "rust_cpu16 wall %e s peak %M KiB" .gpu/segment_bench --volume .gpu/ct.nii.gz --model /tmp/unet --out /tmp/rust_cpu.nii.gz --device cpu --threads 16 --timings "$OUT/rust_cpu16.json" 2>/dev/null
$T -f "python_cpu16 wall %e s peak %M KiB" python3 bench/segment/reference.py --volume .gpu/ct.nii.gz --model /tmp/unet --out /tmp/py_cpu.nii.gz --threads 16 --timings "$OUT/py_cpu16.json" >/dev/null
python3 - <<'PY'
import json, os, glob, nibabel as nib, numpy as np
out = os.environ["OUT"]
L = {n: np.asarray(nib.load(f"/tmp/{n}.nii.gz").dataobj).astype(np.int64) for n in ["rust_gpu", "py_gpu", "rust_cpu", "py_cpu"]}
for a, b in [("rust_gpu", "py_gpu"), ("rust_cpu", "py_cpu"), ("rust_gpu", "rust_cpu")]:
    print(f"{a} vs {b}: {int((L[a] != L[b]).sum())} of {L[a].size} voxels differ; labels {len(np.unique(L[a]))}")
for f in sorted(glob.glob(f"{out}/*.json")):
    print(os.path.basename(f), json.dumps(json.load(open(f))))
PY
