#!/usr/bin/env bash
# The prepared GPU check of the whole project (issue "GPU verification"), sized for one H100/H200
# lease of 15 device minutes: two phases that match the three staged calls of
# ../shared/device/stage-dali (call 1 brings PyAV, call 3 DALI and PyNvVideoCodec). Runs from the
# source tree with PYTHONPATH, no install; every step under `timeout`. Every log and result goes to
# $OUT/gpu-check-PHASE.tar.gz (the device machine returns at most 8 files), with steps.log and the
# phase's summary beside it. The archive is rewritten after every step, so a call killed at the
# device's per-call limit (600 s) still returns every step it finished; each phase's step limits
# add up to less than that.
#
#   call 1:  OUT=$OUT bash benchmarks/gpu_check.sh pyav    # <= 9 min: kernel tests + bench, training 200 steps, kill, resume
#   call 3:  OUT=$OUT bash benchmarks/gpu_check.sh dali    # <= 9 min: decode-stage tests, broken-file test, NVDEC probe
#   call 4:  OUT=$OUT bash benchmarks/gpu_check.sh bench   # <= 9 min: bsp-dali bench (GOP 250 + 16), extract
#   here:    DEVICE=cpu OUT=/tmp/gc bash benchmarks/gpu_check.sh pyav|dali|bench   # the same commands, tiny, on the CPU
#
# Call 4 needs the machine still warm from call 3 (DALI unpacked under /tmp/site): run it at once.
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
pack() {  # what the phase has so far, into $FINAL (rewritten after every step)
  tar -C "$OUT" -czf "$FINAL/gpu-check-$PHASE.tar.gz.part" . && mv "$FINAL/gpu-check-$PHASE.tar.gz.part" "$FINAL/gpu-check-$PHASE.tar.gz"
  cp "$OUT/steps.log" "$FINAL/steps-$PHASE.log" 2>/dev/null
  for f in "$OUT"/bench-*.md "$OUT"/nvdec-probe-*.md "$OUT"/kernel-*.md; do [ -f "$f" ] && cp "$f" "$FINAL/"; done
  return 0
}
run() {  # run SECONDS NAME COMMAND...: one step under a time limit, its output in $OUT/NAME.log
  local limit=$1 name=$2; shift 2
  log "$name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc"
  pack
  return 0
}
if [ "$DEVICE" = cpu ]; then  # tiny settings: a flag check, not a measurement
  GPUS=0; ARCH=resnet18; SIZE=32; BATCH=2; STEPS=20; KILL_AT=10; EVERY=5; BENCH=(--quick --device cpu)
else
  GPUS=1; ARCH=resnet50; SIZE=224; BATCH=32; STEPS=200; KILL_AT=100; EVERY=50
  BENCH=(--device gpu --batch-size 32 --frames 8 --size 224 --data-gop 16 --decode-ahead 8)
fi

machine() {
  { nvidia-smi || true; $py -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pyav', av.__version__)"
    $py -c "import cupy; print('cupy', cupy.__version__)" || true
    $py -c "import nvidia.dali as d; print('dali', d.__version__)" || true; } > "$OUT/machine.txt" 2>&1
}

data() {  # a small Kinetics-layout H.264 set (GOP 250 as distributed), indexed, plus one file broken after indexing
  [ -f "$work/data/bsp-dali-manifest.json" ] && return 0
  log "data"
  timeout 60 $py - "$work/data" "$DEVICE" > "$OUT/data.log" 2>&1 <<'PY'
import sys
from bsp_dali.data.ingest import index_data
from bsp_dali.data.videogen import write_kinetics_folder
root, device = sys.argv[1], sys.argv[2]
small = device == "cpu"
write_kinetics_folder(root, num_classes=4, per_class=3 if small else 6, frames=(40, 60) if small else (200, 250),
                      size=(48, 64) if small else (256, 340))
index_data(root, min_frames=8)
PY
  pack
}

train_kill_resume() {  # >= STEPS steps, SIGKILL at KILL_AT, resume with the same command to STEPS
  local cmd=($py -m bsp_dali train "$work/data" --gpus "$GPUS" --arch "$ARCH" --size "$SIZE" --batch-size "$BATCH"
             --epochs 100 --max-steps "$STEPS" --checkpoint-every "$EVERY" --out "$work/run")
  rm -rf "$work/run"
  log "train until step $KILL_AT, then SIGKILL"
  "${cmd[@]}" > "$OUT/train.log" 2>&1 &
  local pid=$! t=0
  while kill -0 $pid 2>/dev/null && [ $t -lt 150 ]; do
    if grep -q "\"step\": $KILL_AT," "$work/run/metrics.jsonl" 2>/dev/null; then break; fi
    sleep 1; t=$((t + 1))
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  log "killed; resuming"
  cp "$work/run/metrics.jsonl" "$OUT/train-metrics-before-kill.jsonl" 2>/dev/null
  pack
  timeout 200 "${cmd[@]}" >> "$OUT/train.log" 2>&1
  log "train resumed: exit $?"
  cp "$work/run/metrics.jsonl" "$OUT/train-metrics.jsonl" 2>/dev/null
  pack
}

case "$PHASE" in
  pyav)
    machine
    if [ "$DEVICE" = gpu ]; then
      run 90 kernel-tests $py -m pytest -q -m gpu tests/test_kernel_gpu.py
      run 45 kernel-bench $py benchmarks/bench_kernel.py --device gpu --out "$OUT" --tag gpu
    fi
    data
    train_kill_resume
    ;;
  dali)
    machine
    # the broken-file test runs alone: DALI's legacy reader has been seen to hang on damaged files
    broken=tests/test_gpu_readers.py::test_gpu_stage_replaces_samples_of_a_broken_h264_file
    [ "$DEVICE" = gpu ] && run 200 decode-tests $py -m pytest -q -m gpu tests/test_gpu_pipeline.py tests/test_gpu_readers.py \
        --deselect "$broken"
    [ "$DEVICE" = gpu ] && run 60 broken-file-test $py -m pytest -q -m gpu "$broken"
    [ "$DEVICE" = gpu ] && run 200 nvdec-probe $py benchmarks/nvdec_probe.py --budget 150 --out "$OUT" --tag gpu
    [ "$DEVICE" = cpu ] && run 120 nvdec-probe $py benchmarks/nvdec_probe.py --dry-run --out "$OUT" --tag dry-run
    ;;
  bench)
    machine
    run 380 bench $py -m bsp_dali bench "${BENCH[@]}" --out "$OUT" --tag "$DEVICE"
    data
    ckpt="$work/run/checkpoints/last.pt"  # from the pyav phase when the machine stayed warm
    [ -f "$ckpt" ] || run 60 train-short $py -m bsp_dali train "$work/data" --gpus "$GPUS" --arch "$ARCH" \
        --size "$SIZE" --batch-size "$BATCH" --max-steps 3 --out "$work/run"
    run 90 extract bash -c "time $py -m bsp_dali extract '$work/data' --checkpoint '$ckpt' --out '$work/feats.h5' --device $DEVICE"
    ;;
  *)
    echo "usage: [DEVICE=cpu] OUT=DIR bash benchmarks/gpu_check.sh pyav|dali|bench" >&2
    exit 2
    ;;
esac
log "done"
pack
ls "$FINAL"
