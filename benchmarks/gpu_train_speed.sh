#!/usr/bin/env bash
# GPU training-speed suite in one go (sized for a short lease on one H100/H200):
# a JPEG folder of real photos, then benchmarks/train_speed.py for each backbone at 224, bf16,
# channels_last, batch 256, the decoded-image cache on the GPU (nvjpeg decode).
#   bash benchmarks/gpu_train_speed.sh [OUT_DIR]          (env: BACKBONES, TRAIN_IMAGES, VAL_IMAGES, EPOCHS, BATCH, GPU)
# Needs python3 with torch + torchvision (CUDA), pillow, scikit-learn, pyyaml, tqdm, matplotlib;
# efficientnet_pytorch may come from $EDGECLS_EXTRA_SITE (a folder put on PYTHONPATH).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
BACKBONES=${BACKBONES:-resnet18 mobilenetv2 efficientnet-b0 resnet50}
EPOCHS=${EPOCHS:-3}
BATCH=${BATCH:-256}
GPU=${GPU:-0}   # -1 runs the same suite on the CPU (a dry run of this script)
AMP=$([ "$GPU" -ge 0 ] && echo --amp)

[ "$GPU" -ge 0 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
"$PY" benchmarks/photos.py --out "$DATA" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" || exit 1
echo "photo folder ready in $(( $(date +%s) - start )) s"
second=""   # the first backbone also runs train.py a second time (scan reuse); the others skip it
for b in $BACKBONES; do
    echo "== $b"
    "$PY" benchmarks/train_speed.py --backbone "$b" --data "$DATA" --gpu "$GPU" $AMP --batch-size "$BATCH" \
        --epochs "$EPOCHS" $second --json "$OUT_DIR/train_speed_$b.json" 2>&1 | tee "$OUT_DIR/train_speed_$b.txt"
    second="--no-second-run"
done
echo "== summary"
"$PY" benchmarks/train_speed_table.py $(for b in $BACKBONES; do echo "$OUT_DIR/train_speed_$b.json"; done) | tee "$OUT_DIR/table.md"
echo "total $(( $(date +%s) - start )) s"
