"""Write the results table of experiments/README.md from the committed metrics.json files.

Usage (from the project root): python experiments/results_table.py
Every number of our rows is read from experiments/<run>/eval/<set>/metrics.json; the published rows are
quoted from their papers/leaderboard (sources in experiments/README.md); the ablation table is copied from
experiments/ablation/results.md (written by experiments/ablation/evaluate.py). Nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
ABLATION = HERE / "ablation" / "results.md"
BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
RUNS = {  # run folder -> (model description, trained on)
    "pretrained_lite0": (
        "**skintriage** EfficientNet-Lite0, 160 px, ImageNet-pretrained, fine-tuned on 2 CPU cores (bundled)",
        "5,087 HAM10000 + 2,306 clinical images (DermNet x2, Fitzpatrick17k, SD-198, MED-NODE)",
    ),
    "benchmark_cpu": (
        "**skintriage** ResNet-18, 128 px, from scratch, 2 CPU cores (bundled until 2026-12-02)",
        "5,087 HAM10000 + 865 DermNet images",
    ),
}
PUBLISHED = [
    ("ISIC 2018 leaderboard winner (ensemble, external data, ImageNet-pretrained)", "HAM10000 + external",
     "0.885", "", ""),
    ("sklesion 0.2.2 (Keras, image + metadata)", "HAM10000", "0.723", "0.825", ""),
    ("DermaMNIST-E ResNet-18 (Abhishek et al. 2025), 28 px / 224 px", "all 10,015 HAM10000", "", "0.676 / 0.685",
     "0.892 / 0.896"),
]  # fmt: skip


def with_ci(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def isic_table() -> str:
    lines = [
        "| model | trained on | balanced acc. | accuracy | macro AUC |",
        "|---|---|---|---|---|",
        *(f"| {m} | {t} | {b} | {a} | {u} |" for m, t, b, a, u in PUBLISHED),
    ]
    for run, (model, trained_on) in RUNS.items():
        path = HERE / run / "eval" / "isic2018_test" / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text(encoding="utf-8"))
            cells = [
                with_ci(m.get(k), m.get("ci95", {}).get(k)) for k in ("balanced_accuracy", "accuracy", "macro_auc")
            ]
            lines.append(f"| {model} | {trained_on} | {' | '.join(cells)} |")
    return "\n".join(lines)


def targets_table() -> str:
    lines = ["| run | test set | images | ECE | referral sensitivity | referral specificity | threshold | referral AUC |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in RUNS:
        for path in sorted((HERE / run / "eval").glob("*/metrics.json")):
            m = json.loads(path.read_text(encoding="utf-8"))
            r, ci = m["referral"], m.get("ci95", {})
            lines.append(
                f"| {run} | {path.parent.name} | {m['n_images']} | {with_ci(m['ece'], ci.get('ece'))} | "
                f"{with_ci(r.get('sensitivity'), ci.get('referral_sensitivity'))} | "
                f"{with_ci(r.get('specificity'), ci.get('referral_specificity'))} | {r.get('threshold', float('nan')):.4f} | "
                f"{with_ci(r.get('auc'), ci.get('referral_auc'))} |"
            )
    return "\n".join(lines)


def ablation_table() -> str:
    """The ablation's own table, as experiments/ablation/evaluate.py wrote it (one definition of its columns)."""
    if not ABLATION.is_file():
        return "(not run: bash experiments/ablation/run.sh)"
    return "\n".join(line for line in ABLATION.read_text(encoding="utf-8").splitlines() if line.startswith("|"))


def main() -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = (
        "ISIC 2018 Task 3 official test set (1,511 scored images); ours with 95% bootstrap CIs:\n\n"
        f"{isic_table()}\n\nReferral (malignant vs benign, threshold chosen on validation for sensitivity 0.95) "
        f"and calibration on every evaluation set:\n\n{targets_table()}\n\n"
        "Ablation (same splits and test sets; clinical = the held-out split of the five clinical sources, 488 "
        "images; [ablation/results.md](ablation/results.md) says how each column is computed):\n\n"
        f"{ablation_table()}\n"
    )
    README.write_text(f"{head}{BEGIN}\n{body}{END}{tail}", encoding="utf-8")
    print(body)


if __name__ == "__main__":
    main()
