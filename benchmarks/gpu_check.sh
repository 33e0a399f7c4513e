#!/usr/bin/env bash
# One prepared GPU check of the whole project, for the offline H100/H200 machine (see the GPU
# correctness and performance issues). Runs from the source tree with PYTHONPATH, no install.
# Expects DALI and PyAV unpacked under /tmp/site (../shared/device/stage-dali), plus wheels of
# what that machine lacks (torchvision, pillow) installed into /tmp/site. Writes logs under $OUT.
# PyNvVideoCodec (a reference row of the probe) comes from stage-dali's third call.
#   usage: OUT=/some/dir bash benchmarks/gpu_check.sh [quick|decode]
#   "decode" runs only the decode stage's GPU tests and benchmarks/nvdec_probe.py (about 4 minutes).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
py=python3
{ nvidia-smi; $py -c "import torch, cupy, nvidia.dali as d; print('torch', torch.__version__, 'cupy', cupy.__version__, 'dali', d.__version__)"; } > "$OUT/machine.txt" 2>&1
# 1. GPU-marked tests (CuPy kernel bit-exact vs reference; NVDEC iterator vs CPU path; the decode
#    stage's file-list readers on NVDEC frame by frame, 7 pipelines = 1, broken files, preview pixels)
if [ "${1:-}" = decode ]; then
  $py -m pytest -q -m gpu tests/test_gpu_readers.py tests/test_gpu_pipeline.py 2>&1 | tee "$OUT/gpu-tests.log"
  $py benchmarks/nvdec_probe.py --out "$OUT" --tag gpu 2>&1 | tee "$OUT/probe.log"
  exit 0
fi
$py -m pytest -q -m gpu tests/test_kernel_gpu.py tests/test_gpu_pipeline.py tests/test_gpu_readers.py 2>&1 | tee "$OUT/gpu-tests.log"
# 1b. the decode tables of GPU-FINDINGS (decoders.video vs the readers, 1/4/7 pipelines, threads vs
#     processes, GOP 250 vs 16, NVDEC utilization), under 3 minutes
$py benchmarks/nvdec_probe.py --out "$OUT" --tag gpu 2>&1 | tee "$OUT/probe.log"
# 2. preview on generated H.264 data, GPU and CPU on the same plan
$py - <<'PY' 2>&1 | tee "$OUT/preview.log"
import json, numpy as np, subprocess, sys, os
from bsp_dali.data.videogen import write_kinetics_folder
from bsp_dali.data.ingest import index_data
root = "/tmp/gpu-check-data"
write_kinetics_folder(root, num_classes=3, per_class=4, frames=(60, 90), size=(128, 160))
index_data(root, min_frames=8)
for dev in ("gpu", "cpu"):
    subprocess.run([sys.executable, "-m", "bsp_dali", "preview", root, "--out", f"/tmp/pv-{dev}", "--num", "16",
                    "--size", "112", "112", "--device", dev, "--decoder", "pyav" if dev == "cpu" else "auto"], check=True)
diffs = []
for i in range(16):
    g, c = (np.load(f"/tmp/pv-{d}/clips/{i:06d}.npy").astype(float) for d in ("gpu", "cpu"))
    diffs.append(np.abs(g - c).mean())
same = open("/tmp/pv-gpu/samples.jsonl").read() == open("/tmp/pv-cpu/samples.jsonl").read()
print(json.dumps({"recipes_identical": same, "mean_abs_diff_per_clip": diffs, "max_of_means": max(diffs)}))
PY
# 3. a short training run on one GPU, then extraction on the GPU
$py -m bsp_dali train /tmp/gpu-check-data --gpus 1 --arch resnet50 --size 112 --batch-size 8 --epochs 1 \
    --max-steps 30 --out /tmp/gpu-run 2>&1 | tee "$OUT/train.log"
$py -m bsp_dali extract /tmp/gpu-check-data --checkpoint /tmp/gpu-run/checkpoints/last.pt --out /tmp/feats.h5 \
    --device gpu 2>&1 | tee "$OUT/extract.log"
# 4. the benchmark (short unless told otherwise)
if [ "${1:-}" = quick ]; then
  $py -m bsp_dali bench --quick --device gpu --out "$OUT" --tag gpu-quick 2>&1 | tee "$OUT/bench.log"
else
  $py -m bsp_dali bench --device gpu --batch-size 8 --batch-size 32 --frames 8 --size 224 \
      --out "$OUT" --tag gpu 2>&1 | tee "$OUT/bench.log"
fi
