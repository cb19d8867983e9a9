#!/usr/bin/env bash
# The one prepared GPU check of issue #18, for a session lent a device machine (15 minutes of device time in all).
#
#   bash bench/gpu.sh prepare        # here (CPU, with the project's .venv): writes gpu/ (git-ignored, ~8 MB):
#                                    # SmolLM2's tokenizer folder (no weights) and the wheels the device image lacks
#   device run, carry ["gpu"], timeout ~540 s:
#   bash bench/gpu.sh run            # there: engine vs naive on Llama-3.2-3B-shaped random weights, 1K-64K, and
#                                    # a bf16 LoRA step vs an nf4 QLoRA step at 2 x 2048; JSON + log under $OUT
#   GPU_SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu.sh run   # the same commands on this CPU, tiny shapes,
#                                    # the project's own packages (a rehearsal before spending device time)
#
# The device image holds torch, transformers, peft, safetensors, pyarrow, pandas (device/KINDS.md) but nothing can
# be installed there from a registry, so `prepare` fetches the rest as wheels through pip (pure Python, or x86-64
# manylinux builds for the image's python3) and `run` puts them on PYTHONPATH without installing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
GPU=gpu
# pausetune's imports beyond the image (config validation) and bitsandbytes for nf4
WHEELS="jsonschema jsonschema-specifications referencing rpds-py bitsandbytes"

if [ "$mode" = prepare ]; then
    model=${2:-data/models/smollm2}
    [ -f "$model/prepared.json" ] || { echo "bench/gpu.sh prepare: $model/prepared.json missing (run the default pipeline, or pass a prepared model folder)"; exit 2; }
    rm -rf "$GPU" && mkdir -p "$GPU/tokenizer" "$GPU/wheels"
    for f in "$model"/*; do
        case "$(basename "$f")" in *.safetensors|*.bin|*.gguf) ;; *) cp -r "$f" "$GPU/tokenizer/" ;; esac
    done
    # the device's python3 is 3.12 (device/KINDS.md): binary wheels for it, x86-64
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        -d "$GPU/wheels" $WHEELS >/dev/null
    du -sh "$GPU"
    exit 0
fi
[ "$mode" = run ] || { echo "usage: bash bench/gpu.sh prepare [MODEL_DIR] | run"; exit 2; }

OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/workflow:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$GPU/wheels" ] && [ -z "${GPU_SMOKE:-}" ]; then  # a wheel is a zip: importable from its path (bitsandbytes' native library too,
    for w in "$GPU"/wheels/*.whl; do    # once unpacked: unpack them all, it costs a second)
        python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$GPU/site"
    done
    export PYTHONPATH="$PWD/$GPU/site:$PYTHONPATH"
fi
PY=${PYTHON:-python3}
if [ -n "${GPU_SMOKE:-}" ]; then  # CPU rehearsal: same commands, tiny shapes
    TOK=${TOK:-$GPU/tokenizer}; DEV=cpu; SHAPE=tiny; LENGTHS=600,1200; SEQ=128; TSHAPE=tiny; QUANT=none
else
    TOK=$GPU/tokenizer; DEV=cuda; SHAPE=llama-3.2-3b; LENGTHS=1000,4000,16000,32000,64000; SEQ=2048
    TSHAPE=llama-3.2-3b; QUANT=nf4
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
fi
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee "$OUT/versions.txt"
set -o pipefail
# 1. eval engine (prefix-KV reuse, batched decode) against a naive generate loop, same prompts, with TFLOP/s
$PY bench/eval_grid.py "$TOK" --random-shape "$SHAPE" --device "$DEV" --lengths "$LENGTHS" --depths 0,50,100 \
    --allow-mismatch --json "$OUT/eval_grid.json" 2>&1 | tee "$OUT/eval_grid.log"
# 2. a LoRA step in bf16 against an nf4 QLoRA step, 2 x SEQ tokens
$PY bench/train_step.py --random-shape "$TSHAPE" --device "$DEV" --batch 2 --seq-len "$SEQ" --steps 3 --warmup 1 \
    --only ours --json "$OUT/train_bf16.json" 2>&1 | tee "$OUT/train_bf16.log"
$PY bench/train_step.py --random-shape "$TSHAPE" --device "$DEV" --batch 2 --seq-len "$SEQ" --steps 3 --warmup 1 \
    --only ours --quantization "$QUANT" --json "$OUT/train_nf4.json" 2>&1 | tee "$OUT/train_nf4.log"
echo "bench/gpu.sh: done -> $OUT"
