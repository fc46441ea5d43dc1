#!/usr/bin/env bash
# The ablation of the paper at our scale: the same data, steps and batch sizes for every row.
#   clip      CLIP-only (FLAIR-style): soft-target CLIP on public data + CLIP on elite pairs
#   tp        + textual pretraining (stage-1 text encoder)
#   kt        + knowledge transfer (attention over elite pairs)
#   full      + generative caption decoder = full KeepFIT V2 (the default model's recipe)
#   holdout   the full method and CLIP-only trained without any image of a held-out category, to measure
#             zero-shot on that category through its expert descriptions alone
# Every row uses the default data: the public train splits of cfp_oct_mx and ffa_huapu4, and the elite pairs
# (real MM-Retinal atlas pairs for photographs, composed pairs for FFA and OCT); dr_sh_600 stays out of training
# (the unseen second site).  Each run is exported (int8, what is served) and evaluated on the test splits; the
# two tables (training sites; unseen site and atlas retrieval) go to stdout.
# SEEDS="0 1 2" repeats every variant with other seeds (model initialisation and batch order; the data, the
# elite subset and the cached views stay the same) and the table shows the mean over them.
# VARIANTS picks rows (default: clip tp kt full); TEXT_FLAGS are extra flags for stage 1 (`keepfit train
# text`); TEXT_RUN reuses another folder's stage-1 run; the arguments are extra flags for every `keepfit train
# hybrid`.  Runs already in $RUNS are reused.
#
#   SEEDS="0 1 2" bash training/scripts/ablation.sh
#   RUNS=runs-noaug TEXT_RUN=runs/text VARIANTS="full" bash training/scripts/ablation.sh --no-site-augment
set -euo pipefail
KEEPFIT=${KEEPFIT:-.venv/bin/keepfit}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0}
VARIANTS=${VARIANTS:-clip tp kt full}
TEXT_RUN=${TEXT_RUN:-$RUNS/text}
HOLDOUT=${HOLDOUT:-proliferative diabetic retinopathy}
read -r -a TEXT_EXTRA <<< "${TEXT_FLAGS:-}"
DATA=()
if [[ -n "${DATA_ROOT:-}" ]]; then DATA=(--data-root "$DATA_ROOT"); fi

has() { [[ " $VARIANTS " == *" $1 "* ]]; }
if has tp || has kt || has full || has holdout; then
  if [[ ! -f "$TEXT_RUN/model.pt" ]]; then
    "$KEEPFIT" train text --out "$TEXT_RUN" --name "$(basename "$TEXT_RUN")" "${DATA[@]}" "${TEXT_EXTRA[@]}"
  fi
fi
INIT=(--init "$TEXT_RUN/model.pt")
train() {  # row key, run name, flags...
  local key=$1 name=$2; shift 2
  if [[ ! -f "$RUNS/$name/model.pt" ]]; then
    "$KEEPFIT" train hybrid --name "$name" --runs-dir "$RUNS" "${DATA[@]}" "$@"
  fi
  if [[ ! -f "$RUNS/$name/eval/report.json" ]]; then
    "$KEEPFIT" export --checkpoint "$RUNS/$name/model.pt" --out "$RUNS/$name/artifact" --quantize int8 "${DATA[@]}"
    "$KEEPFIT" eval suite --artifact "$RUNS/$name/artifact" --out "$RUNS/$name/eval" --run "$RUNS/$name" \
      --record-into "$RUNS/$name/model.pt" "${DATA[@]}"
  fi
  REPORTS[$key]="${REPORTS[$key]:+${REPORTS[$key]},}$RUNS/$name/eval/report.json"
}
EXTRA=("$@")
declare -A REPORTS
for seed in $SEEDS; do
  sfx=""
  if [[ "$seed" != 0 ]]; then sfx="-s$seed"; fi
  S=(--seed "$seed")
  if has clip; then train clip "abl-clip$sfx" "${S[@]}" --losses public,elite "${EXTRA[@]}"; fi
  if has tp; then train tp "abl-tp$sfx" "${S[@]}" --losses public,elite "${INIT[@]}" "${EXTRA[@]}"; fi
  if has kt; then train kt "abl-kt$sfx" "${S[@]}" --losses public,elite,kt "${INIT[@]}" "${EXTRA[@]}"; fi
  if has full; then train full "keepfit-v2-small$sfx" "${S[@]}" "${INIT[@]}" "${EXTRA[@]}"; fi
  if has holdout; then
    train holdout_clip "abl-clip-holdout-pdr$sfx" "${S[@]}" --holdout "$HOLDOUT" --losses public,elite "${EXTRA[@]}"
    train holdout_full "holdout-pdr$sfx" "${S[@]}" --holdout "$HOLDOUT" "${INIT[@]}" "${EXTRA[@]}"
  fi
done

ROWS=()
add() { if [[ -n "${REPORTS[$1]:-}" ]]; then ROWS+=("$2=${REPORTS[$1]}"); fi; }
add clip "CLIP-only (FLAIR-style)"
add tp "+ textual pretraining"
add kt "+ knowledge transfer"
add full "+ generative decoder (full KeepFIT V2)"
add holdout_clip "CLIP-only, trained without '$HOLDOUT'"
add holdout_full "full, trained without '$HOLDOUT'"
"$KEEPFIT" eval compare "${ROWS[@]}"
