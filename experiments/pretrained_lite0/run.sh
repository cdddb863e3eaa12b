#!/usr/bin/env bash
# The bundled model, end to end: fine-tune the ImageNet-pretrained EfficientNet-Lite0 of
# configs/pretrained_lite0.yaml on HAM10000 and five clinical sources (about 40 minutes on 2 CPU cores;
# rerun to resume after an interruption), then publish the run here and its bundle as src/skintriage/model/default.
# Usage (from the project root, with the virtual environment active): bash experiments/pretrained_lite0/run.sh
set -euo pipefail
out=$(dirname "$0")
run=runs/pretrained_lite0
skintriage train configs/pretrained_lite0.yaml --out "$run"
bash experiments/publish.sh "$run" "$out" --as-default
# The old bundle's clinical test set, scored by the new bundle for a like-for-like comparison
# (the DermNet clinical held-out split, 184 images, the same seed-0 project split both configs use).
skintriage evaluate --source dermnet --root ../shared/data/dermnet_clinical --split test \
  --out "$out/comparison/dermnet_clinical_test"
skintriage bench --only latency --out "$out/latency"
