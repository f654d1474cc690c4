#!/usr/bin/env bash
# What the composite action runs (action.yml), also runnable by hand or in any other CI:
#
#   EDGETL_DIR=path/to/edgetl-checkout INPUT_REFERENCE=model.keras \
#   INPUT_ARTIFACTS="model.onnx model.tflite web/model.json" bash run.sh
#
# 1. a venv ($EDGETL_VENV) with edgetl installed from the checkout ($EDGETL_DIR, pinned by the
#    action's edgetl-ref) and its pinned stack (pip's cache is the action's),
# 2. TF.js and onnxruntime-web for Node and Chromium (`npm ci` in its web/, npm's cache),
# 3. Chromium: the system one, $EDGETL_CHROMIUM, or Playwright's build (cached) when neither,
# 4. `edgetl verify` with JUnit, HTML and JSON reports in $EDGETL_REPORT_DIR; its exit status is
#    this script's (0 parity, 1 a mismatch, 2 a bad input), reports written in every case.
set -euo pipefail

: "${EDGETL_DIR:?EDGETL_DIR must name an edgetl checkout}"
: "${INPUT_ARTIFACTS:?INPUT_ARTIFACTS must name the files (or a bundle folder) to verify}"
PYTHON="${PYTHON:-python3}"
VENV="${EDGETL_VENV:-${RUNNER_TEMP:-/tmp}/edgetl-venv}"
REPORT_DIR="${EDGETL_REPORT_DIR:-${RUNNER_TEMP:-/tmp}/edgetl-report}"
EXTRAS="${EDGETL_EXTRAS:-export,cpu,browser}"
mkdir -p "$REPORT_DIR"

echo "::group::install edgetl from $EDGETL_DIR"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# A second run in one job (or a restored venv) skips what is already in place for this
# checkout: the stamps hold the pyproject / package-lock hashes and the extras.
pip_stamp="$(sha256sum "$EDGETL_DIR/pyproject.toml" | cut -c1-64) $EXTRAS $EDGETL_DIR"
if [ "$(cat "$VENV/.edgetl-stamp" 2>/dev/null)" != "$pip_stamp" ]; then
  "$VENV/bin/python" -m pip install -q -e "$EDGETL_DIR[$EXTRAS]"
  echo "$pip_stamp" > "$VENV/.edgetl-stamp"
fi
npm_stamp="$(sha256sum "$EDGETL_DIR/web/package-lock.json" | cut -c1-64)"
if [ "$(cat "$EDGETL_DIR/web/node_modules/.edgetl-stamp" 2>/dev/null)" != "$npm_stamp" ]; then
  (cd "$EDGETL_DIR/web" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
  echo "$npm_stamp" > "$EDGETL_DIR/web/node_modules/.edgetl-stamp"
fi
echo "::endgroup::"

if [ "${EDGETL_BROWSER:-true}" = "true" ] && [ -z "${EDGETL_CHROMIUM:-}" ] \
   && [ ! -x /usr/bin/chromium ]; then
  echo "::group::Chromium (Playwright's build)"
  "$VENV/bin/python" -m playwright install chromium
  EDGETL_CHROMIUM="$("$VENV/bin/python" -c \
    'from playwright.sync_api import sync_playwright as s; p = s().start(); print(p.chromium.executable_path); p.stop()')"
  export EDGETL_CHROMIUM
  echo "::endgroup::"
fi

"$VENV/bin/edgetl" runtimes

args=()
[ -n "${INPUT_REFERENCE:-}" ] && args+=(--reference "$INPUT_REFERENCE")
[ -n "${INPUT_PROBES:-}" ] && args+=(--probes "$INPUT_PROBES")
[ -n "${INPUT_IMAGES:-}" ] && args+=(--images "$INPUT_IMAGES")
# shellcheck disable=SC2206  # space-separated lists, split on purpose
[ -n "${INPUT_RUNTIMES:-}" ] && args+=(--runtimes ${INPUT_RUNTIMES})
# shellcheck disable=SC2206
[ -n "${INPUT_REQUIRE:-}" ] && args+=(--require ${INPUT_REQUIRE})
# shellcheck disable=SC2206
[ -n "${INPUT_ARGS:-}" ] && args+=(${INPUT_ARGS})
# shellcheck disable=SC2206
files=(${INPUT_ARTIFACTS})

status=0
"$VENV/bin/edgetl" verify "${files[@]}" "${args[@]}" \
  --junit "$REPORT_DIR/junit.xml" --html "$REPORT_DIR/report.html" \
  --json "$REPORT_DIR/result.json" || status=$?
if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "report-dir=$REPORT_DIR" >> "$GITHUB_OUTPUT"; fi
echo "edgetl verify exit status $status; reports in $REPORT_DIR"
exit "$status"
