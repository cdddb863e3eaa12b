#!/usr/bin/env bash
# Regenerates the data summaries and leakage audits in this folder from the real data.
# Usage (from the project root): bash experiments/data_audit/run.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
data=${1:-../shared/data}
out=$(dirname "$0")
ham=$data/ham10000_isic2018_224

skintriage data summarize ham10000 --root "$ham" --json > "$out/ham10000_summary.json"
skintriage data summarize isic2018_test --root "$ham" --json > "$out/isic2018_test_summary.json"
skintriage data summarize dermnet --root "$data/dermnet_clinical" --json > "$out/dermnet_summary.json"
skintriage data summarize pad_ufes_20 --root "$data/pad_ufes_20" --json --no-hash-images > "$out/pad_ufes_20_summary.json"

# The leakage audit exits 2 when something leaks; here that is the expected outcome for the naive split.
for split in naive project; do
  skintriage data audit ham10000 --root "$ham" --metadata "$ham/HAM10000_metadata_full_10015.csv" \
    --split "$split" --json > "$out/ham10000_full_metadata_${split}_split_audit.json" || [ $? -eq 2 ]
done
skintriage data audit dermnet --root "$data/dermnet_clinical" --split naive --json \
  > "$out/dermnet_naive_split_audit.json" || [ $? -eq 2 ]
skintriage data audit dermnet --root "$data/dermnet_clinical" --json > "$out/dermnet_project_split_audit.json"
echo "written to $out"
