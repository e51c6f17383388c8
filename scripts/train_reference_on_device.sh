#!/usr/bin/env bash
# Train the bundled reference model on the lent GPU machine ("device"), then install it.
#
# Who runs what:
#   here (this machine):    ./scripts/train_reference_on_device.sh fetch-wheels
#   on the device (the `run` tool, carry [".whl"] and, when resuming, "runs/reference-train"):
#                           bash scripts/train_reference_on_device.sh device-train
#   here, with the folder the run's files came back to (files_at):
#                           ./scripts/train_reference_on_device.sh restore FILES_AT   # unfinished
#                           ./scripts/train_reference_on_device.sh install FILES_AT   # finished
#   then, here:             kv-transition reference eval --card src/kv_transition/assets/reference-model/MODEL_CARD.md
#
# Why it looks like this (../shared/notes/gpu-systems-probe.md, /work/.library/device/README.md):
# - The device has torch 2.11, transformers 5.17 and tokenizers 0.23 but no pydantic, and no
#   network. Training needs no kvpress, so it runs on the device's own torch/transformers and only
#   pydantic travels as wheels. `install` re-saves config and tokenizer with this machine's pinned
#   transformers 5.2, so the committed files are written by the versions the project installs.
# - One command may run 10 minutes and a session has 30 minutes of device time, starts included.
#   Budget (probe: 2,500 steps of ~65k tokens took ~400 s on one H100 for this 4.1 M model, i.e.
#   ~0.16 s/step; contexts here reach 4.6k tokens, so expect 0.16-0.25 s/step): 5,000 steps are
#   ~15-20 minutes, i.e. two calls of `device-train` with --max-minutes 8.5 each. The log prints
#   s_per_step every 25 steps: check it in the first call's output_tail.
# - A call that does not finish leaves a checkpoint (model + AdamW state, ~50 MB). The machine
#   stays warm only 30 s after a call, so the checkpoint also comes back in 15 MB parts ($OUT
#   takes files of at most 16 MiB); `restore` joins them into runs/reference-train/ so the next
#   call can carry it (carry limit 64 MiB: ~50 MB checkpoint + ~3 MB wheels fits).
# - Training is deterministic given --seed (bitwise on CPU; on GPU torch warns about any
#   non-deterministic kernel), so a resumed run continues exactly the same schedule and data.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=runs/reference-train           # ignored by git; survives between calls while warm
STEPS=${STEPS:-5000}
MAX_MINUTES=${MAX_MINUTES:-8.5}
WORKERS=${WORKERS:-12}                 # the device has 16 cores; data generation is CPU work
SEED=${SEED:-0}
TRAIN_ARGS=(--out "$OUT_DIR" --steps "$STEPS" --device cuda --seed "$SEED" --workers "$WORKERS")

case "${1:-}" in
fetch-wheels)
  # pydantic and its compiled core for the device's Python 3.12 (x86-64 manylinux).
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing_extensions==4.16.0
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo "note: add '/.whl/' to .git/info/exclude"
  ;;
device-train)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, tokenizers; print(torch.__version__, transformers.__version__, tokenizers.__version__)"
  # pre-flight (~15 s): three smoke steps on the GPU catch a library mismatch before the long run
  python3 -m kv_transition reference train --out /tmp/preflight --size smoke --steps 3 \
    --tokens-per-step 2048 --device cuda --workers 2 --log-every 1
  resume=()
  [ -f "$OUT_DIR/checkpoint.pt" ] && resume=(--resume)
  python3 -m kv_transition reference train "${TRAIN_ARGS[@]}" --max-minutes "$MAX_MINUTES" "${resume[@]}"
  if [ -f "$OUT_DIR/checkpoint.pt" ]; then   # not finished: send the checkpoint back in parts
    split -b 15m -d "$OUT_DIR/checkpoint.pt" "$OUT/checkpoint.pt.part-"
  else
    cp "$OUT_DIR"/{config.json,generation_config.json,model.safetensors,training.json} "$OUT"/
  fi
  cp "$OUT_DIR/train_log.jsonl" "$OUT"/
  ;;
restore)
  src=${2:?usage: restore FILES_AT}
  mkdir -p "$OUT_DIR"
  cat "$src"/checkpoint.pt.part-* > "$OUT_DIR/checkpoint.pt"
  cp "$src/train_log.jsonl" "$OUT_DIR/"
  echo "restored $OUT_DIR/checkpoint.pt; next device call: carry [\".whl\", \"$OUT_DIR\"]"
  ;;
install)
  src=${2:?usage: install FILES_AT}
  dst=src/kv_transition/assets/reference-model
  .venv/bin/python -c "import sys; from pathlib import Path; from kv_transition.reference.model import install; install(Path(sys.argv[1]), Path(sys.argv[2]))" "$src" "$dst"
  cp "$src/training.json" "$src/train_log.jsonl" "$dst/"
  du -sh "$dst"
  echo "installed into $dst; now measure: .venv/bin/kv-transition reference eval --card $dst/MODEL_CARD.md"
  ;;
*)
  sed -n '2,30p' "$0"
  exit 2
  ;;
esac
