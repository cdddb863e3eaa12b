#!/usr/bin/env bash
# Performance: latency of the demo's path, folder and training throughput against plain references,
# the deployment variants side by side, and scaling with input size (about 10 minutes on 2 CPU cores).
# Run it on an otherwise idle machine: other work on the cores makes every figure pessimistic (the
# report records the load average at the start and the end).
# Usage (from the project root): bash experiments/performance/run.sh
set -euo pipefail
skintriage bench --out "$(dirname "$0")"
