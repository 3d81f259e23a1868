#!/usr/bin/env bash
# The main job: kf train (2 backbones, all folds) -> kf ensemble -> kf submit.
#
#   DATA=../shared/maskfaces make demo     # a real competition folder
#   make demo                              # the embedded default: generated data (kf make-data)
#
# Variables: DATA (competition folder; default: generate data/demo), OOF (stage
# folder; default oof/demo or oof/<data folder name>), CONFIGS (space-separated
# YAML files; default lite0 + mnv3 on generated data, lite0_age + lite1_age + mnv2 on real data), SET (extra --set overrides, e.g. "epochs=1"), OUT (submission path),
# HOLDOUT (share of the people withheld as a local holdout, e.g. 0.2: every
# estimate is then printed beside its holdout score; default none).
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1

GT_ARGS=()
if [ -z "${DATA:-}" ]; then
  DATA=data/demo
  OOF=${OOF:-oof/demo}
  if [ ! -f "$DATA/train/train.csv" ]; then
    kf make-data "$DATA" --people 150 --eval-people 40 --size 96x128 --seed 0
  fi
  GT_ARGS=(--ground-truth "$DATA/gt.csv")
  # generated faces are simple: small images train fast; two members keep the demo short
  SET=${SET:-"image_size=[64,64]"}
  CONFIGS=${CONFIGS:-"configs/lite0.yaml configs/mnv3.yaml"}
fi
# real data: three pretrained members that err in different places, ~50 min on 2 CPU cores (docs/results.md, "Main job on the real data"):
# lite0_age and lite1_age (task heads, age in years, training cut 58; two backbone sizes), mnv2 (another family)
CONFIGS=${CONFIGS:-"configs/lite0_age.yaml configs/lite1_age.yaml configs/mnv2.yaml"}
OOF=${OOF:-oof/$(basename "$DATA")}
OUT=${OUT:-submission.csv}

config_args=()
for c in $CONFIGS; do config_args+=(--config "$c"); done
set_args=()
for s in ${SET:-}; do set_args+=(--set "$s"); done
holdout_args=()
[ -n "${HOLDOUT:-}" ] && holdout_args=(--holdout "$HOLDOUT")

start=$(date +%s)
echo "== kf train: $CONFIGS on $DATA (stage files in $OOF)"
kf train --data "$DATA" --oof "$OOF" "${holdout_args[@]}" "${config_args[@]}" "${set_args[@]}" --fold all --no-progress
echo "== kf ensemble: every method, in-sample and nested, with per-class bias tuning"
kf ensemble --data "$DATA" --oof "$OOF" --method all --bias
echo "== kf submit: ensemble/best (the best single run, or a blend that beats it credibly)"
kf submit --data "$DATA" --oof "$OOF" --from ensemble/best --out "$OUT" --overwrite "${GT_ARGS[@]}"
echo "== main job done in $(( $(date +%s) - start )) s: $OUT"
