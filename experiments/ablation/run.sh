#!/usr/bin/env bash
# The ablation cells, on the same splits and test sets (each resumes if interrupted; 25 to 37 minutes a cell
# on 2 CPU cores), then the table: experiments/ablation/results.md.
# Usage (from the project root, with the virtual environment active): bash experiments/ablation/run.sh
set -euo pipefail
skintriage train configs/pretrained_lite0.yaml --out runs/pretrained_lite0  # the bundled model
skintriage train configs/ablation/lite0_ham_dermnet.yaml --out runs/ablation_pretrained_ham_dermnet
# from scratch: the same recipe, with the backbone at the head's rate (backbone_lr_ratio exists for pretrained weights)
skintriage train configs/pretrained_lite0.yaml --out runs/ablation_scratch_all --set pretrained=none \
  --set backbone_lr_ratio=1.0 --set name=ablation_scratch_all
python experiments/ablation/evaluate.py --runs runs
