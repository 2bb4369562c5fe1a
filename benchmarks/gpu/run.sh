#!/usr/bin/env bash
# trvae's GPU throughput (Keras on JAX) on a lent device machine: install the carried wheels
# offline, then run bench.py. See README.md beside this file for the wheels and the device call.
#
#   bash benchmarks/gpu/run.sh [bench.py options]        # from the repository root
#
# Environment: WHEELS (default runs/wheels/gpu), SITE (default /tmp/site), PYTHON (default python3),
# OUT (the device tool's result folder; default runs/gpu).
set -uo pipefail
cd "$(dirname "$0")/../.." || { echo "error: cannot enter the repository root"; exit 2; }
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-runs/wheels/gpu}
SITE=${SITE:-/tmp/site}
RESULTS=${OUT:-runs/gpu}

command -v "$PYTHON" >/dev/null || { echo "error: no $PYTHON on PATH"; exit 2; }
ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "error: no wheels in $WHEELS (carry it; see benchmarks/gpu/README.md)"; exit 2; }
for name in keras namex optree anndata zarr numcodecs donfig google_crc32c legacy_api_wrap natsort \
            array_api_compat scverse_misc session_info2 pandas pytz tzdata; do
  ls "$WHEELS"/"$name"-*.whl >/dev/null 2>&1 || { echo "error: $WHEELS has no $name wheel (see benchmarks/gpu/README.md)"; exit 2; }
done
mkdir -p "$RESULTS"
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >"$RESULTS/pip.log" 2>&1; then
  echo "error: installing the carried wheels failed: $(tail -n 1 "$RESULTS/pip.log")"; exit 2
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" benchmarks/gpu/bench.py --out "$RESULTS" "$@" 2>&1 | tee "$RESULTS/bench.log"
exit "${PIPESTATUS[0]}"
