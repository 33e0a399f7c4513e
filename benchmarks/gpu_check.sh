#!/usr/bin/env bash
# The prepared GPU check of the whole project (issue "GPU verification"), sized for one H100/H200
# lease of 15 device minutes: two phases that match the three staged calls of
# ../shared/device/stage-dali (call 1 brings PyAV, call 3 DALI and PyNvVideoCodec). Runs from the
# source tree with PYTHONPATH, no install; every step under `timeout`. Every log and result goes to
# $OUT/gpu-check-PHASE.tar.gz (the device machine returns at most 8 files), with steps.log and the
# phase's summary beside it.
#
#   call 1:  OUT=$OUT bash benchmarks/gpu_check.sh pyav    # ~3 min: kernel, training 200 steps + kill/resume
#   call 3:  OUT=$OUT bash benchmarks/gpu_check.sh dali    # ~8 min: decode-stage tests, probe, bench, extract
#   here:    DEVICE=cpu OUT=/tmp/gc bash benchmarks/gpu_check.sh pyav|dali   # the same commands, tiny, on the CPU
#
# Expects PyAV (and for `dali` DALI) unpacked under /tmp/site; the machine has torch, torchvision,
# Pillow, CuPy, numpy, h5py, typer, rich and pytest. DEVICE=cpu shrinks every step so that the
# flags and the flow can be checked on a laptop (it measures nothing).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
FINAL=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-gpu}
PHASE=${1:-}
mkdir -p "$FINAL"
py=python3
[ "$DEVICE" = cpu ] && py=${PYTHON:-python3}
work=${WORK:-/tmp/gpu-check-work}
OUT=$work/results-$PHASE  # everything of this phase; packed into $FINAL at the end
rm -rf "$OUT"
mkdir -p "$work" "$OUT"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }
run() {  # run SECONDS NAME COMMAND...: one step under a time limit, its output in $OUT/NAME.log
  local limit=$1 name=$2; shift 2
  log "$name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc"
  return 0
}
if [ "$DEVICE" = cpu ]; then  # tiny settings: a flag check, not a measurement
  GPUS=0; ARCH=resnet18; SIZE=32; BATCH=2; STEPS=20; KILL_AT=10; EVERY=5; BENCH=(--quick --device cpu)
else
  GPUS=1; ARCH=resnet50; SIZE=224; BATCH=32; STEPS=200; KILL_AT=100; EVERY=50
  BENCH=(--device gpu --batch-size 32 --frames 8 --size 224 --data-gop 16)
fi

machine() {
  { nvidia-smi || true; $py -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pyav', av.__version__)"
    $py -c "import cupy; print('cupy', cupy.__version__)" || true
    $py -c "import nvidia.dali as d; print('dali', d.__version__)" || true; } > "$OUT/machine.txt" 2>&1
}

data() {  # a small Kinetics-layout H.264 set (GOP 250 as distributed), indexed, plus one file broken after indexing
  [ -f "$work/data/bsp-dali-manifest.json" ] && return 0
  log "data"
  timeout 120 $py - "$work/data" "$DEVICE" > "$OUT/data.log" 2>&1 <<'PY'
import sys
from bsp_dali.data.ingest import index_data
from bsp_dali.data.videogen import write_kinetics_folder
root, device = sys.argv[1], sys.argv[2]
small = device == "cpu"
write_kinetics_folder(root, num_classes=4, per_class=3 if small else 6, frames=(40, 60) if small else (200, 250),
                      size=(48, 64) if small else (256, 340))
index_data(root, min_frames=8)
PY
}

train_kill_resume() {  # >= STEPS steps, SIGKILL at KILL_AT, resume with the same command to STEPS
  local cmd=($py -m bsp_dali train "$work/data" --gpus "$GPUS" --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH"
             --epochs 100 --max-steps "$STEPS" --checkpoint-every "$EVERY" --out "$work/run")
  rm -rf "$work/run"
  log "train until step $KILL_AT, then SIGKILL"
  "${cmd[@]}" > "$OUT/train.log" 2>&1 &
  local pid=$! t=0
  while kill -0 $pid 2>/dev/null && [ $t -lt 300 ]; do
    if grep -q "\"step\": $KILL_AT," "$work/run/metrics.jsonl" 2>/dev/null; then break; fi
    sleep 1; t=$((t + 1))
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  log "killed; resuming"
  timeout 400 "${cmd[@]}" >> "$OUT/train.log" 2>&1
  log "train resumed: exit $?"
  cp "$work/run/metrics.jsonl" "$OUT/train-metrics.jsonl" 2>/dev/null
}

case "$PHASE" in
  pyav)
    machine
    if [ "$DEVICE" = gpu ]; then
      run 120 kernel-tests $py -m pytest -q -m gpu tests/test_kernel_gpu.py
      run 60 kernel-bench $py benchmarks/bench_kernel.py --device gpu --out "$OUT" --tag gpu
    fi
    data
    train_kill_resume
    ;;
  dali)
    machine
    [ "$DEVICE" = gpu ] && run 240 decode-tests $py -m pytest -q -m gpu tests/test_gpu_pipeline.py tests/test_gpu_readers.py
    [ "$DEVICE" = gpu ] && run 200 nvdec-probe $py benchmarks/nvdec_probe.py --out "$OUT" --tag gpu
    [ "$DEVICE" = cpu ] && run 120 nvdec-probe $py benchmarks/nvdec_probe.py --dry-run --out "$OUT" --tag dry-run
    run 330 bench $py -m bsp_dali bench "${BENCH[@]}" --out "$OUT" --tag "$DEVICE"
    data
    ckpt="$work/run/checkpoints/last.pt"  # from the pyav phase when the machine stayed warm
    [ -f "$ckpt" ] || run 180 train-short $py -m bsp_dali train "$work/data" --gpus "$GPUS" --arch "$ARCH" \
        --size "$SIZE" --batch-size "$BATCH" --max-steps 3 --out "$work/run"
    run 150 extract bash -c "time $py -m bsp_dali extract '$work/data' --checkpoint '$ckpt' --out '$work/feats.h5' --device $DEVICE"
    ;;
  *)
    echo "usage: [DEVICE=cpu] OUT=DIR bash benchmarks/gpu_check.sh pyav|dali" >&2
    exit 2
    ;;
esac
log "done"
tar -C "$OUT" -czf "$FINAL/gpu-check-$PHASE.tar.gz" .
cp "$OUT/steps.log" "$FINAL/steps-$PHASE.log"
for f in "$OUT"/bench-*.md "$OUT"/nvdec-probe-*.md "$OUT"/kernel-*.md; do [ -f "$f" ] && cp "$f" "$FINAL/"; done
ls "$FINAL"
