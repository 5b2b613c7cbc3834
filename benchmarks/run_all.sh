#!/usr/bin/env bash
# Every CPU benchmark in turn (about 40 minutes on 2 cores; run it on an otherwise idle machine:
# other processes distort the timings). Results (JSON, logs) go to bench_out/; the ONNX speed
# table is rewritten in docs/onnx_speed.md. GPU training: benchmarks/gpu_train_speed.sh and
# benchmarks/gpu_first_epoch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench_out
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() { echo "== $*"; "$@" 2>&1 | tee -a "$OUT/run_all.log"; }

# Issue 5: train.py vs the raw step ceiling on the CPU; the 70,000-image scan.
run "$PY" benchmarks/photos.py --out "$OUT/photos" --train 768 --val 128
run "$PY" benchmarks/train_speed.py --backbone mobilenetv2 --data "$OUT/photos" --batch-size 32 --epochs 3 \
    --json "$OUT/train_speed_mobilenetv2_cpu.json"
run "$PY" benchmarks/fill_reader.py --data "$OUT/photos" --images 16000 --json "$OUT/fill_reader.json"
if [ -d /usr/share/datasets/fashion-mnist ]; then   # apt-get install dataset-fashion-mnist
    run "$PY" benchmarks/verify_speed.py "$OUT/fmnist_png" --json "$OUT/verify_speed.json"   # issue 7 (writes the PNGs)
    run "$PY" benchmarks/train_speed.py --scan-only --data "$OUT/fmnist_png" --json "$OUT/scan_70k.json"
    run "$PY" benchmarks/fill_reader.py --data "$OUT/fmnist_png/train" --images 16000 --cache-size 70x40 \
        --json "$OUT/fill_reader_png.json"
    run "$PY" benchmarks/train_speed.py --backbone FP_classifier --data "$OUT/fmnist_png" --batch-size 64 \
        --epochs 2 --json "$OUT/train_speed_fp_classifier_cpu.json"
    # Issue 18: folder vs shards vs resized shards vs a warm persistent cache (both configs).
    run "$PY" benchmarks/data_formats.py --out "$OUT/data_formats" --json "$OUT/data_formats.json"
else
    echo "skipping the 70,000-image benchmarks: apt-get install dataset-fashion-mnist"
fi
# Issue 19: train.py idle and beside a busy process, old threading vs the thread budget.
run "$PY" benchmarks/thread_budget.py --json "$OUT/thread_budget.json"
# Issue 3: inference.py's full path vs the bare forward.
run "$PY" benchmarks/inference_speed.py --json "$OUT/inference_speed.json"
# Issue 6: 64 concurrent clients for 60 s vs the bare Predictor.
run "$PY" benchmarks/serve_load.py --out "$OUT/serve_load.json"
# Issue 4: FP32 vs INT8 accuracy; ONNX speed and size of every backbone (docs/onnx_speed.md).
run "$PY" benchmarks/int8_accuracy.py --work "$OUT/int8" --json "$OUT/int8_accuracy.json"
run "$PY" benchmarks/onnx_speed.py --json "$OUT/onnx_speed.json"
echo "all benchmarks done; results in $OUT/"
