#!/usr/bin/env bash
# The CPU benchmark, end to end: train configs/benchmark_cpu.yaml from scratch (about 65 minutes on 2 CPU
# cores; rerun to resume after an interruption), then publish the run here (until 2026-12-02 its bundle was the
# default model; configs/pretrained_lite0.yaml now makes it) and the results table in experiments/README.md.
# Usage (from the project root, with the virtual environment active): bash experiments/benchmark_cpu/run.sh
set -euo pipefail
out=$(dirname "$0")
run=runs/benchmark_cpu
skintriage train configs/benchmark_cpu.yaml --out "$run"
bash experiments/publish.sh "$run" "$out"
