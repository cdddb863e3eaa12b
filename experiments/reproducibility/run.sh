#!/usr/bin/env bash
# The bundled model's training command a second time (about 25 to 40 minutes on 2 CPU cores; rerun to resume),
# its evaluation files copied here, then the side-by-side table: experiments/reproducibility/results.md.
# Usage (from the project root, with the virtual environment active): bash experiments/reproducibility/run.sh
set -euo pipefail
out=$(dirname "$0")/rerun
run=runs/repro_pretrained_lite0
skintriage train configs/pretrained_lite0.yaml --out "$run"
mkdir -p "$out"
cp "$run/log.csv" "$out/"
for set in validation isic2018_test dermnet_fitzpatrick17k_med_node_sd198_test; do
  mkdir -p "$out/eval/$set" && cp "$run/eval/$set/metrics.json" "$out/eval/$set/"
done
python experiments/reproducibility/compare.py
