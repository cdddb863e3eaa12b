#!/usr/bin/env bash
# Which correction for class imbalance wins? Three otherwise identical proxy runs of the benchmark config
# (64 px, 10 epochs, faster EMA; the three take about 20 minutes on 2 CPU cores), compared on the VALIDATION
# split only: weighted loss with inverse-frequency weights (power 1), with inverse-square-root weights
# (power 0.5), and a class-balanced sampler with power 0.5.
# Usage (from the project root): bash experiments/imbalance/run.sh
set -euo pipefail
out=$(dirname "$0")
for variant in loss:1.0 loss:0.5 sampler:0.5; do
  imbalance=${variant%%:*}; power=${variant##*:}; name="${imbalance}_p${power}"
  skintriage train configs/benchmark_cpu.yaml --out "runs/imbalance_$name" \
    --set name="imbalance_$name" --set imbalance="$imbalance" --set imbalance_power="$power" \
    --set input_size=64 --set cache_side=72 --set epochs=10 --set lr=0.001 --set ema_decay=0.995 \
    --set test_sources=[]
  cp "runs/imbalance_$name/log.csv" "$out/log_$name.csv"
  cp "runs/imbalance_$name/eval/validation/metrics.json" "$out/validation_$name.json"
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = ["| imbalance | val balanced acc. [95% CI] | val macro AUC | val referral AUC | val ECE (calibrated) |",
        "|---|---|---|---|---|"]
for name in ("loss_p1.0", "loss_p0.5", "sampler_p0.5"):
    m = json.loads((out / f"validation_{name}.json").read_text())
    lo, hi = m["ci95"]["balanced_accuracy"]
    rows.append(f"| {name} | {m['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {m['macro_auc']:.3f} | "
                f"{m['referral']['auc']:.3f} | {m['ece']:.3f} |")
table = "\n".join(rows)
(out / "results.md").write_text(table + "\n")
print(table)
PY
