# Shared set-up of the GPU benchmark scripts (sourced, not run): repository root, OUT_DIR from $1,
# the python, PYTHONPATH ($EDGECLS_EXTRA_SITE first: a folder with extra packages, e.g.
# efficientnet_pytorch), the edgecls cache folder and the photo folder DATA.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${1:-${OUT:-bench_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="${EDGECLS_EXTRA_SITE:+$EDGECLS_EXTRA_SITE:}$PWD"
export EDGECLS_CACHE_DIR=${EDGECLS_CACHE_DIR:-/tmp/edgecls-cache}
DATA=${DATA:-/tmp/edgecls-photos}
