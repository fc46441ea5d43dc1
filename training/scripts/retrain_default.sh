#!/usr/bin/env bash
# Retrain the default model `keepfit-v2-small` from scratch with the full KeepFIT V2 method, evaluate it on the
# test splits through its exported ONNX artifact, and write it to artifacts/keepfit-v2-small.
#
#   bash training/scripts/retrain_default.sh [extra flags for `keepfit train hybrid`, e.g. --device cuda --steps 600]
#
# Needs the data root (../shared/data, or KEEPFIT_DATA_ROOT / DATA_ROOT=...).  Run from the repository root.
set -euo pipefail
KEEPFIT=${KEEPFIT:-.venv/bin/keepfit}
RUNS=${RUNS:-runs}
DATA=()
if [[ -n "${DATA_ROOT:-}" ]]; then DATA=(--data-root "$DATA_ROOT"); fi
OUT=${OUT:-artifacts/keepfit-v2-small}

# stage 1: textual pretraining of the text encoder (reused when already there)
if [[ ! -f "$RUNS/text/model.pt" ]]; then
  "$KEEPFIT" train text --name text --runs-dir "$RUNS" "${DATA[@]}"
fi
# stage 2: hybrid image-text knowledge injection (public soft CLIP + elite CLIP + knowledge transfer + decoder)
"$KEEPFIT" train hybrid --name keepfit-v2-small --runs-dir "$RUNS" --init "$RUNS/text/model.pt" "${DATA[@]}" "$@"
RUN="$RUNS/keepfit-v2-small"
# evaluate exactly what will be served (int8 ONNX), record the summary in the checkpoint, export the artifact
"$KEEPFIT" export --checkpoint "$RUN/model.pt" --out "$RUN/artifact" --quantize int8 "${DATA[@]}"
"$KEEPFIT" eval suite --artifact "$RUN/artifact" --out "$RUN/eval" --run "$RUN" --record-into "$RUN/model.pt" "${DATA[@]}"
"$KEEPFIT" export --checkpoint "$RUN/model.pt" --out "$OUT" --quantize int8 "${DATA[@]}"
echo "default model written to $OUT (evaluation: $RUN/eval/report.md)"
