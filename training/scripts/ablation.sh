#!/usr/bin/env bash
# The ablation of the paper at our scale: the same data, steps and batch sizes for every row.
#   clip      CLIP-only (FLAIR-style): soft-target CLIP on public data + CLIP on elite pairs
#   tp        + textual pretraining (stage-1 text encoder)
#   kt        + knowledge transfer (attention over elite pairs)
#   full      + generative caption decoder = full KeepFIT V2 (the default model's recipe)
#   holdout   full method trained without any image of a held-out category, to measure zero-shot on it
# Each run is exported (int8, what is served) and evaluated on the test splits; the table goes to stdout.
#
#   bash training/scripts/ablation.sh [extra flags for every `keepfit train hybrid`, e.g. --device cuda]
set -euo pipefail
KEEPFIT=${KEEPFIT:-.venv/bin/keepfit}
RUNS=${RUNS:-runs}
HOLDOUT=${HOLDOUT:-proliferative diabetic retinopathy}
DATA=()
if [[ -n "${DATA_ROOT:-}" ]]; then DATA=(--data-root "$DATA_ROOT"); fi

if [[ ! -f "$RUNS/text/model.pt" ]]; then
  "$KEEPFIT" train text --name text --runs-dir "$RUNS" "${DATA[@]}"
fi
INIT=(--init "$RUNS/text/model.pt")
train() {  # name, flags...
  local name=$1; shift
  if [[ ! -f "$RUNS/$name/model.pt" ]]; then
    "$KEEPFIT" train hybrid --name "$name" --runs-dir "$RUNS" "${DATA[@]}" "$@"
  fi
  if [[ ! -f "$RUNS/$name/eval/report.json" ]]; then
    "$KEEPFIT" export --checkpoint "$RUNS/$name/model.pt" --out "$RUNS/$name/artifact" --quantize int8 "${DATA[@]}"
    "$KEEPFIT" eval suite --artifact "$RUNS/$name/artifact" --out "$RUNS/$name/eval" --run "$RUNS/$name" \
      --record-into "$RUNS/$name/model.pt" "${DATA[@]}"
  fi
}
EXTRA=("$@")
train abl-clip --losses public,elite "${EXTRA[@]}"
train abl-tp --losses public,elite "${INIT[@]}" "${EXTRA[@]}"
train abl-kt --losses public,elite,kt "${INIT[@]}" "${EXTRA[@]}"
train keepfit-v2-small "${INIT[@]}" "${EXTRA[@]}"
train holdout-pdr --holdout "$HOLDOUT" "${INIT[@]}" "${EXTRA[@]}"

"$KEEPFIT" eval compare \
  "CLIP-only (FLAIR-style)=$RUNS/abl-clip/eval/report.json" \
  "+ textual pretraining=$RUNS/abl-tp/eval/report.json" \
  "+ knowledge transfer=$RUNS/abl-kt/eval/report.json" \
  "+ generative decoder (full KeepFIT V2)=$RUNS/keepfit-v2-small/eval/report.json" \
  "full, trained without '$HOLDOUT'=$RUNS/holdout-pdr/eval/report.json"
