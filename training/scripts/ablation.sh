#!/usr/bin/env bash
# The ablation of the paper at our scale: the same data, steps and batch sizes for every row.
#   clip      CLIP-only (FLAIR-style): soft-target CLIP on public data + CLIP on elite pairs
#   tp        + textual pretraining (stage-1 text encoder)
#   kt        + knowledge transfer (attention over elite pairs)
#   full      + generative caption decoder = full KeepFIT V2 (the default model's recipe)
#   holdout   the full method and CLIP-only trained without any image of a held-out category, to measure
#             zero-shot on that category through its expert descriptions alone
# Each run is exported (int8, what is served) and evaluated on the test splits; the table goes to stdout.
# SEEDS="0 1 2" repeats every variant with other seeds (model initialisation and batch order; the data, the
# elite subset and the cached views stay the same) and the table shows the mean over them.
#
#   SEEDS="0 1 2" bash training/scripts/ablation.sh [extra flags for every `keepfit train hybrid`]
set -euo pipefail
KEEPFIT=${KEEPFIT:-.venv/bin/keepfit}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0}
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
declare -A REPORTS
for seed in $SEEDS; do
  sfx=""
  if [[ "$seed" != 0 ]]; then sfx="-s$seed"; fi
  train "abl-clip$sfx" --seed "$seed" --losses public,elite "${EXTRA[@]}"
  train "abl-tp$sfx" --seed "$seed" --losses public,elite "${INIT[@]}" "${EXTRA[@]}"
  train "abl-kt$sfx" --seed "$seed" --losses public,elite,kt "${INIT[@]}" "${EXTRA[@]}"
  train "keepfit-v2-small$sfx" --seed "$seed" "${INIT[@]}" "${EXTRA[@]}"
  for v in abl-clip abl-tp abl-kt keepfit-v2-small; do
    REPORTS[$v]="${REPORTS[$v]:+${REPORTS[$v]},}$RUNS/$v$sfx/eval/report.json"
  done
done
train holdout-pdr --holdout "$HOLDOUT" "${INIT[@]}" "${EXTRA[@]}"
train abl-clip-holdout-pdr --holdout "$HOLDOUT" --losses public,elite "${EXTRA[@]}"

"$KEEPFIT" eval compare \
  "CLIP-only (FLAIR-style)=${REPORTS[abl-clip]}" \
  "+ textual pretraining=${REPORTS[abl-tp]}" \
  "+ knowledge transfer=${REPORTS[abl-kt]}" \
  "+ generative decoder (full KeepFIT V2)=${REPORTS[keepfit-v2-small]}" \
  "CLIP-only, trained without '$HOLDOUT'=$RUNS/abl-clip-holdout-pdr/eval/report.json" \
  "full, trained without '$HOLDOUT'=$RUNS/holdout-pdr/eval/report.json"
