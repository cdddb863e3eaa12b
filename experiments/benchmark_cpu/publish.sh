#!/usr/bin/env bash
# Copy a finished run of configs/benchmark_cpu.yaml into the repository: config, training log, splits,
# evaluation reports (metrics.json, predictions.csv, report.md, plots) and the bundle as models/default.
set -euo pipefail
run=${1:-runs/benchmark_cpu}
out=$(dirname "$0")
cp "$run/config.json" "$run/log.csv" "$run/splits.csv" "$out/"
rm -rf "$out/eval" && cp -r "$run/eval" "$out/eval"
mkdir -p models/default
cp "$run/bundle/model.safetensors" "$run/bundle/model.json" models/default/
python -c "from pathlib import Path; from skintriage.report import write_model_card; write_model_card(Path('models/default'))"
python experiments/results_table.py > /dev/null
echo "published $run: $(du -h models/default/model.safetensors | cut -f1) bundle in models/default"
