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
skintriage data summarize dermnet --root "$data/dermnet_extra" --json > "$out/dermnet_extra_summary.json"
skintriage data summarize fitzpatrick17k --root "$data/fitzpatrick17k_subset" --json > "$out/fitzpatrick17k_summary.json"
skintriage data summarize sd198 --root "$data/sd198_lesions" --json > "$out/sd198_summary.json"
skintriage data summarize med_node --root "$data/med_node" --json > "$out/med_node_summary.json"
skintriage data summarize pad_ufes_20 --root "$data/pad_ufes_20" --json --no-hash-images > "$out/pad_ufes_20_summary.json"

# The leakage audit exits 2 when something leaks; here that is the expected outcome for the naive split.
for split in naive project; do
  skintriage data audit ham10000 --root "$ham" --metadata "$ham/HAM10000_metadata_full_10015.csv" \
    --split "$split" --json > "$out/ham10000_full_metadata_${split}_split_audit.json" || [ $? -eq 2 ]
done
skintriage data audit dermnet --root "$data/dermnet_clinical" --split naive --json \
  > "$out/dermnet_naive_split_audit.json" || [ $? -eq 2 ]
skintriage data audit dermnet --root "$data/dermnet_clinical" --json > "$out/dermnet_project_split_audit.json"
# Every training and test source of the bundled model's config hashed together: photos shared across sources.
python "$out/cross_source.py" --config configs/pretrained_lite0.yaml --data-root "$data"
echo "written to $out"
