# Shared set-up of the GPU benchmark scripts (sourced, not run): repository root, OUT_DIR from $1,
# the python, PYTHONPATH ($EDGECLS_EXTRA_SITE first: a folder with extra packages, e.g.
# efficientnet_pytorch), the edgecls cache folder, the photo folder's size (TRAIN_IMAGES, VAL_IMAGES)
# and its path DATA (named by that size: photos.py refuses a folder holding another count).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${1:-${OUT:-bench_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="${EDGECLS_EXTRA_SITE:+$EDGECLS_EXTRA_SITE:}$PWD"
export EDGECLS_CACHE_DIR=${EDGECLS_CACHE_DIR:-/tmp/edgecls-cache}
TRAIN_IMAGES=${TRAIN_IMAGES:-30000}
VAL_IMAGES=${VAL_IMAGES:-2000}
DATA=${DATA:-/tmp/edgecls-photos-$TRAIN_IMAGES-$VAL_IMAGES}
