#!/usr/bin/env bash
# Copy a finished training run into the repository: config, training log, splits and evaluation reports
# (metrics.json, predictions.csv, report.md, plots) into DEST; with --as-default also the whole bundle
# (weights, model.json, uncertainty and acquisition tensors) as the project's default model,
# src/skintriage/model/default (package data: it ships in the wheel).
# Usage (project root): bash experiments/publish.sh RUN DEST [--as-default]
set -euo pipefail
run=$1
out=$2
mkdir -p "$out"
cp "$run/config.json" "$run/log.csv" "$run/splits.csv" "$out/"
rm -rf "$out/eval" && cp -r "$run/eval" "$out/eval"
if [ "${3:-}" = "--as-default" ]; then
  default=src/skintriage/model/default  # = skintriage.common.paths.DEFAULT_BUNDLE in this checkout
  rm -rf "$default" && mkdir -p "$default"
  cp "$run"/bundle/*.safetensors "$run/bundle/model.json" "$default/"
  python -c "from pathlib import Path; from skintriage.model.card import write_model_card; write_model_card(Path('$default'))"
  echo "bundle: $(du -ch "$default"/*.safetensors | tail -1 | cut -f1) in $default"
fi
python experiments/results_table.py > /dev/null
echo "published $run in $out"
