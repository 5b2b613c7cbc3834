#!/usr/bin/env bash
# Issue 5's open question in one go on a GPU machine (about 7 minutes on one H100/H200): where the first
# epoch goes, and whether cudnn autotuning earns its cost.
#   bash benchmarks/gpu_first_epoch.sh [OUT_DIR]     (env: TRAIN_IMAGES, VAL_IMAGES, RUNS, BATCH, GPU)
# 1. fill_reader.py: the cache fill's file reading vs the first version's, and what each leaves a
#    thread issuing torch ops (many cores here, unlike the 2-core reference machine);
# 2. gpu_first_epoch_probe.py: read / nvjpeg / whole-fill rates (its autotune section is left to
#    the train.py runs below, which show the same through timings.json's first_step_s);
# 3. train_speed.py for each RUNS entry BACKBONE:on|off (cudnn autotuning: --cudnn-benchmark or --no-cudnn-benchmark),
#    then one table (benchmarks/train_speed_table.py).
# CPU dry run of the script: GPU=-1 TRAIN_IMAGES=256 VAL_IMAGES=64 BATCH=16 RUNS="resnet18:on resnet18:off"
# Needs what gpu_train_speed.sh needs (efficientnet_pytorch may come from $EDGECLS_EXTRA_SITE).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
RUNS=${RUNS:-resnet18:on resnet18:off mobilenetv2:off efficientnet-b0:off resnet50:off mobilenetv2:on}
BATCH=${BATCH:-256}
GPU=${GPU:-0}
AMP=$([ "$GPU" -ge 0 ] && echo --amp)
start=$(date +%s)
"$PY" benchmarks/photos.py --out "$DATA" --train "$TRAIN_IMAGES" --val "$VAL_IMAGES" || exit 1
echo "== fill_reader ($(( $(date +%s) - start )) s)"
"$PY" benchmarks/fill_reader.py --data "$DATA/train" --json "$OUT_DIR/fill_reader.json" 2>&1 | tee "$OUT_DIR/fill_reader.txt"
echo "== probe ($(( $(date +%s) - start )) s)"
"$PY" benchmarks/gpu_first_epoch_probe.py --data "$DATA/train" --backbones --json "$OUT_DIR/probe.json" 2>&1 | tee "$OUT_DIR/probe.txt"
results=()
for run in $RUNS; do
    b=${run%%:*}
    flag=$([ "${run##*:}" = on ] && echo --cudnn-benchmark || echo --no-cudnn-benchmark)
    echo "== train_speed $b autotune ${run##*:} ($(( $(date +%s) - start )) s)"
    "$PY" benchmarks/train_speed.py --backbone "$b" --data "$DATA" --gpu "$GPU" $AMP --batch-size "$BATCH" --epochs 3 \
        --no-second-run $flag --json "$OUT_DIR/train_speed_${b}_${run##*:}.json" 2>&1 | tee "$OUT_DIR/train_speed_${b}_${run##*:}.txt"
    results+=("$OUT_DIR/train_speed_${b}_${run##*:}.json")
done
echo "== summary"
"$PY" benchmarks/train_speed_table.py "${results[@]}" | tee "$OUT_DIR/table.md"
echo "total $(( $(date +%s) - start )) s"
