#!/usr/bin/env bash
# Issue 5's open question in one go on a GPU machine (about 6 minutes on one H100/H200): where the first
# epoch goes, and whether cudnn autotuning earns its cost.
#   bash benchmarks/gpu_first_epoch.sh [OUT_DIR]     (env: TRAIN_IMAGES, VAL_IMAGES, BACKBONE, BATCH, GPU, PROBE_ARGS)
# CPU dry run of the script: GPU=-1 TRAIN_IMAGES=256 VAL_IMAGES=64 BATCH=16 PROBE_ARGS="--images 256 --batch 2 --backbones resnet18"
# 1. fill_reader.py: the cache fill's file reading vs the first version's, and what each leaves the
#    training thread (many cores here, unlike the 2-core reference machine);
# 2. gpu_first_epoch_probe.py: read / nvjpeg / whole-fill rates; first vs later steps with cudnn
#    autotuning on, on with benchmark_limit 1, and off, for the four issue backbones;
# 3. train_speed.py for BACKBONE (resnet18) with and without --no-cudnn-benchmark (timings.json
#    now says where the first epoch went: first step, fill, waits for rows).
# Needs what gpu_train_speed.sh needs (efficientnet_pytorch may come from $EDGECLS_EXTRA_SITE).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
BACKBONE=${BACKBONE:-resnet18}
BATCH=${BATCH:-256}
GPU=${GPU:-0}
AMP=$([ "$GPU" -ge 0 ] && echo --amp)
start=$(date +%s)
"$PY" benchmarks/photos.py --out "$DATA" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" || exit 1
echo "== fill_reader ($(( $(date +%s) - start )) s)"
"$PY" benchmarks/fill_reader.py --data "$DATA/train" --json "$OUT_DIR/fill_reader.json" 2>&1 | tee "$OUT_DIR/fill_reader.txt"
echo "== probe ($(( $(date +%s) - start )) s)"
"$PY" benchmarks/gpu_first_epoch_probe.py --data "$DATA/train" ${PROBE_ARGS:-} --json "$OUT_DIR/probe.json" 2>&1 | tee "$OUT_DIR/probe.txt"
for flag in "" --no-cudnn-benchmark; do
    echo "== train_speed $BACKBONE $flag ($(( $(date +%s) - start )) s)"
    "$PY" benchmarks/train_speed.py --backbone "$BACKBONE" --data "$DATA" --gpu "$GPU" $AMP --batch-size "$BATCH" --epochs 3 \
        --no-second-run $flag --json "$OUT_DIR/train_speed_$BACKBONE${flag:+_nobench}.json" 2>&1 | tee "$OUT_DIR/train_speed_$BACKBONE${flag:+_nobench}.txt"
done
echo "total $(( $(date +%s) - start )) s"
