#!/usr/bin/env bash
# One command for a GPU machine: the EM model from scratch and warm-started from the bundled
# weights with the lsd 2D crops added, and the LM ViT3D (scratch / center / average), side by side for MINUTES each.
# Needs gpu_data/ (python scripts/train_gpu.py pack ... on any machine). Results are packed into
# $OUT as part_* pieces of one tar (at most 15 MiB each) plus summary.txt:
#   cat part_* | tar xf - -C runs/gpu
set -u
OUT=${OUT:-runs/gpu_out}
MIN=${MINUTES:-7.5}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpurun}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $PY -c "import torch, numpy, scipy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
  nproc; } > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"
limit=$(awk -v m="$MIN" 'BEGIN { print int(m * 60 + 150) }')

# job NAME ARGS...: run it; if it dies within 90 s, retry once without bf16 for what is left
job() {
  local name=$1; shift
  local t0=$SECONDS
  timeout "$limit" $PY scripts/train_gpu.py "$@" --out "$WORK/$name" --minutes "$MIN" > "$WORK/$name.out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && [ $((SECONDS - t0)) -lt 90 ]; then
    echo "$name failed (rc $rc) after $((SECONDS - t0)) s; retrying without bf16" >> "$WORK/$name.out"
    local left; left=$(awk -v m="$MIN" -v s=$((SECONDS - t0)) 'BEGIN { print m - s / 60 - 0.5 }')
    timeout "$limit" $PY scripts/train_gpu.py "$@" --out "$WORK/$name" --minutes "$left" --no-bf16 \
      >> "$WORK/$name.out" 2>&1
    rc=$?
  fi
  echo "$name exit $rc after $((SECONDS - t0)) s" >> "$WORK/status.txt"
}

# from scratch with ISBI 2012 shown as prediction shows ssTEM (the model's 20 nm grid; 2026-12-01's scratch run used 8 nm)
job em_scratch em --workers 4 --seed 0 --isbi-grid model &
# warm start plus the lsd 2D ssTEM crops (another tissue and microscope; 2026-12-01's run without them: no gain)
job em_lsd em --workers 4 --seed 1 --init src/napari_segneuron/weights/default.pt --lr 1e-3 --snapshots 0.75 \
  --a-weight 0.3 --c-weight 0.3 --isbi-weight 0.2 --lsd-weight 0.2 &
job lm lm --workers 5 --seed 0 &
wait

{ cat "$WORK/machine.txt" "$WORK/status.txt"
  for f in "$WORK"/*.out; do echo "== $f"; tail -n 25 "$f"; done; } > "$OUT/summary.txt" 2>&1
tar cf - -C "$WORK" . | split -b 15M - "$OUT/part_"
ls -la "$OUT"
cat "$OUT/summary.txt"
