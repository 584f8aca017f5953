#!/usr/bin/env bash
# The one prepared command for a lent GPU (H100 or H200): calibrate this GPU, then validate the latency
# model against real decode forwards on it. Everything that comes back is under $OUT (at most 8 files):
#   $OUT/device.txt                         nvidia-smi, python, torch, triton
#   $OUT/calibrate.log, $OUT/validate.log   console output
#   $OUT/calibration/<gpu-slug>.json        the calibration table   -> commit as calibration/<gpu-slug>.json
#   $OUT/validation/<gpu-slug>.json         validation results      -> commit under calibration/validation/
#   $OUT/validation/<gpu-slug>-<model>.png  overlays (one per model)
#
# Usage (from the repository root; the wheels come from scripts/fetch_wheels.sh and travel as carry .whl):
#   bash scripts/device_run.sh              # on the GPU machine: calibrate, then validate (< 10 minutes)
#   bash scripts/device_run.sh --dry-run    # anywhere: wheels, imports, both plans; stops before CUDA
# Knobs (environment): SKIP_CALIBRATE=1 (validate against calibration/<slug>.json already in the repo),
# SKIP_VALIDATE=1, CALIBRATE_BUDGET / VALIDATE_BUDGET (s after which no new point / curve starts; what ran
# is written), CALIBRATE_TIMEOUT / VALIDATE_TIMEOUT (hard limits, s; SIGTERM still writes), TOTAL (s for
# the whole command: validation gets what calibration leaves), CALIBRATE_ARGS / VALIDATE_ARGS (extra
# Hydra overrides).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/nfpsim-out}
SITE=${SITE:-/tmp/site}
TOTAL=${TOTAL:-585}  # the whole command, under the device's 600 s per call
CALIBRATE_BUDGET=${CALIBRATE_BUDGET:-360}
CALIBRATE_TIMEOUT=${CALIBRATE_TIMEOUT:-390}
VALIDATE_MARGIN=${VALIDATE_MARGIN:-60}  # validation's last curve and final writes, after its budget
# By default validation gets what calibration left: limit = TOTAL - elapsed, budget = limit - margin.
RUNS=${RUNS:-/tmp/nfpsim-runs}  # Hydra run dirs: outside $OUT, whose file count is limited
mkdir -p "$OUT" "$RUNS"
started=$(date +%s)
say() { echo "[device_run +$(( $(date +%s) - started ))s] $*"; }

# -- wheels the machine lacks (hydra-core, omegaconf, antlr4) -----------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "error: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="$SITE:$PWD"
else
  say "no .whl/ here (run scripts/fetch_wheels.sh and carry .whl); using the installed packages"
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TQDM_MININTERVAL=5
"$PY" -c "import hydra, omegaconf, nfpsim.cli.calibrate, nfpsim.cli.validate" \
  || { echo "error: nfpsim's apps do not import (missing wheels?)" >&2; exit 1; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# fit=false: the fit (a minute or two of CPU) runs after the call, anywhere: nfpsim-calibrate refit=<table>
CALIBRATE=("$PY" -m nfpsim.cli.calibrate "output_dir=$OUT/calibration" "time_budget_s=$CALIBRATE_BUDGET" fit=false
           "hydra.run.dir=$RUNS/calibrate")
VALIDATE=("$PY" -m nfpsim.cli.validate "output_dir=$OUT/validation" "hydra.run.dir=$RUNS/validate")
if [ "${SKIP_CALIBRATE:-0}" != 1 ]; then
  # this call's table is not fitted yet: predict analytically here, re-predict later with measured=<json>
  VALIDATE+=("calibration_dir=$OUT/calibration" latency=analytic)
fi
# shellcheck disable=SC2206  # word splitting of the extra overrides is intended
CALIBRATE+=(${CALIBRATE_ARGS:-})
# shellcheck disable=SC2206
VALIDATE+=(${VALIDATE_ARGS:-})

if [ "$DRY_RUN" = 1 ]; then
  say "dry run: the plans, then the commands a GPU run would start"
  "$PY" -m nfpsim.cli.calibrate plan=true "time_budget_s=$CALIBRATE_BUDGET" fit=false "hydra.run.dir=$RUNS/calibrate-plan" \
    ${CALIBRATE_ARGS:-} | tail -n 2 || exit 1
  "$PY" -m nfpsim.cli.validate plan=true "hydra.run.dir=$RUNS/validate-plan" ${VALIDATE_ARGS:-} | tail -n 2 || exit 1
  least=$(( TOTAL - CALIBRATE_TIMEOUT - $(date +%s) + started ))
  echo "would run: timeout $CALIBRATE_TIMEOUT ${CALIBRATE[*]}"
  echo "would run: timeout ${VALIDATE_TIMEOUT:-$least} ${VALIDATE[*]} time_budget_s=${VALIDATE_BUDGET:-$(( least - VALIDATE_MARGIN ))}" \
    "(at least; what calibration leaves of ${TOTAL}s)"
  exit 0
fi

status=0
if [ "${SKIP_CALIBRATE:-0}" != 1 ]; then
  say "calibrate (limit ${CALIBRATE_TIMEOUT}s, no new point after ${CALIBRATE_BUDGET}s)"
  timeout "$CALIBRATE_TIMEOUT" "${CALIBRATE[@]}" 2>&1 | tee "$OUT/calibrate.log"
  rc=${PIPESTATUS[0]}
  # Without a table, validation still measures (latency=auto predicts analytically); the measurements
  # can be re-predicted later with nfpsim-validate measured=...
  [ "$rc" = 0 ] || { say "calibrate exited $rc; validating anyway"; status=$rc; }
fi
if [ "${SKIP_VALIDATE:-0}" != 1 ]; then
  left=$(( TOTAL - $(date +%s) + started ))
  VALIDATE_TIMEOUT=${VALIDATE_TIMEOUT:-$left}
  VALIDATE_BUDGET=${VALIDATE_BUDGET:-$(( left - VALIDATE_MARGIN ))}
  [ "$VALIDATE_BUDGET" -gt 0 ] || VALIDATE_BUDGET=1
  say "validate (limit ${VALIDATE_TIMEOUT}s, no new curve after ${VALIDATE_BUDGET}s)"
  timeout "$VALIDATE_TIMEOUT" "${VALIDATE[@]}" "time_budget_s=$VALIDATE_BUDGET" 2>&1 | tee "$OUT/validate.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { say "validate exited $rc (finished curves are in $OUT/validation)"; status=$rc; }
fi
say "done; files under \$OUT:"
find "$OUT" -type f -printf '%P %s bytes\n'
exit "$status"
