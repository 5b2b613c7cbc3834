#!/usr/bin/env bash
# Issue 18's GPU targets in one go on a GPU machine (about 6 minutes on one H100/H200): resnet18 at 224,
# batch 256, bf16, 30,000 photo JPEGs (benchmarks/photos.py), train.py's first epoch against the raw step
# ceiling when its images come from
#   1. the JPEG folder, cold (a new --cache-dir): the gpu fill decodes with nvjpeg, then keeps its rows
#      in that --cache-dir                                              (target first epoch >= 0.5x)
#   2. the same folder again, same --cache-dir: the rows run 1 kept, uploaded (target first epoch >= 0.8x)
#   3. shards packed from the folder (`edgecls data pack`), cold
#   4. shards packed with --resize-to 280 (the training cache's resolution at 224), cold
# then one table (benchmarks/train_speed_table.py). The steady-state target (>= 0.9x for the four issue
# backbones) is gpu_train_speed.sh's.
#   bash benchmarks/gpu_data_sources.sh [OUT_DIR]     (env: TRAIN_IMAGES, VAL_IMAGES, BACKBONE, BATCH, GPU)
# CPU dry run of the script: GPU=-1 TRAIN_IMAGES=256 VAL_IMAGES=64 BATCH=16
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
BACKBONE=${BACKBONE:-resnet18}
BATCH=${BATCH:-256}
GPU=${GPU:-0}
AMP=$([ "$GPU" -ge 0 ] && echo --amp)
start=$(date +%s)
"$PY" benchmarks/photos.py --out "$DATA" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" || exit 1
WARM="$OUT_DIR/cache-warm"
rm -rf "$WARM"
speed() {  # NAME, then train_speed.py arguments
    local name=$1; shift
    echo "== $name ($(( $(date +%s) - start )) s)"
    "$PY" benchmarks/train_speed.py --backbone "$BACKBONE" --data "$DATA" --gpu "$GPU" $AMP --batch-size "$BATCH" \
        --epochs 3 --no-second-run --json "$OUT_DIR/data_$name.json" "$@" 2>&1 | tee "$OUT_DIR/data_$name.txt"
}
speed folder_cold --cache-dir "$WARM"
speed folder_warm --cache-dir "$WARM"
"$PY" -m edgecls data pack "$DATA" --out "$OUT_DIR/shards" --force | tail -3
speed shards --train-data "$OUT_DIR/shards"
"$PY" -m edgecls data pack "$DATA" --out "$OUT_DIR/shards_280" --resize-to 280 --force | tail -3
speed shards_resized --train-data "$OUT_DIR/shards_280"
echo "== summary"
"$PY" benchmarks/train_speed_table.py "$OUT_DIR"/data_folder_cold.json "$OUT_DIR"/data_folder_warm.json \
    "$OUT_DIR"/data_shards.json "$OUT_DIR"/data_shards_resized.json | tee "$OUT_DIR/data_sources.md"
echo "total $(( $(date +%s) - start )) s"
