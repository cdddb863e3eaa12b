"""The stage-package reorganisation (issue 15) changed no behaviour: the bundled model's ``skintriage evaluate``
output, file for file, before and after; and what the new layout promises (import costs, start-up time).

* **Evaluate, before vs after.** ``--before`` (default ``60e250f``, the last commit before the reorganisation)
  is checked out into a temporary git worktree and run with ``PYTHONPATH=<worktree>/src`` on its own bundled
  model; the working tree runs ``python -m skintriage.cli`` on its bundled model. Both evaluate the same sets
  (DermNet test split, MED-NODE) into separate folders; every file's SHA-256 is compared, and for a CSV that
  differs, the columns and row counts that differ are listed.
* **Imports.** Whether ``import skintriage.triage.referral`` loads torch or scikit-learn (it must not), in a
  fresh interpreter.
* **Start-up.** Median wall-clock of ``skintriage --help`` over ``--n`` fresh processes (issue 15: ≤ 1.5 s).

Writes ``results.json`` and ``results.md`` next to this file. Usage:

    python experiments/architecture/run.py --data-root ../shared/data [--before 60e250f] [--n 7]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENTRY_POINT = Path(sys.executable).parent / "skintriage"
# (name, evaluate arguments relative to the data root)
SETS = (
    ("dermnet_test", ["--source", "dermnet", "--root", "dermnet_clinical", "--split", "test"]),
    ("med_node", ["--source", "med_node", "--root", "med_node"]),
)
OLD_BUNDLE = "models/default"  # where the bundled model lived before the reorganisation


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(*, src: Path, checkpoint: Path, data_root: Path, arguments: list[str], out: Path) -> None:
    args = list(arguments)
    args[args.index("--root") + 1] = str(data_root / args[args.index("--root") + 1])
    command = [sys.executable, "-m", "skintriage.cli", "evaluate", *args, "--checkpoint", str(checkpoint)]
    environment = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run(
        [*command, "--out", str(out)], check=True, env=environment, capture_output=True, cwd=tempfile.gettempdir()
    )


def csv_difference(before: Path, after: Path) -> dict:
    old, new = pd.read_csv(before), pd.read_csv(after)
    if list(old.columns) != list(new.columns) or len(old) != len(new):
        return {"columns_before": list(old.columns), "columns_after": list(new.columns), "rows": [len(old), len(new)]}
    differing = {
        column: int((old[column] != new[column]).sum()) for column in old.columns if not old[column].equals(new[column])
    }
    return {"rows": len(old), "differing_columns": differing}


def compare(before: Path, after: Path) -> list[dict]:
    names = sorted({p.name for p in before.iterdir()} | {p.name for p in after.iterdir()})
    rows = []
    for name in names:
        a, b = before / name, after / name
        row = {"file": name, "identical": a.is_file() and b.is_file() and sha256(a) == sha256(b)}
        if not row["identical"] and name.endswith(".csv") and a.is_file() and b.is_file():
            row["difference"] = csv_difference(a, b)
        rows.append(row)
    return rows


def heavy_imports(module: str) -> dict:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'sklearn', 'gradio') if m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {"module": module, "heavy_modules_loaded": json.loads(found.replace("'", '"'))}


def help_seconds(n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([str(ENTRY_POINT), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def markdown(results: dict) -> str:
    lines = [
        "# Issue 15: the reorganisation changed no behaviour",
        "",
        f"Command: `python experiments/architecture/run.py --data-root DATA --before {results['before']}` "
        f"({results['date']}, {results['machine']}).",
        "",
        f"## `skintriage evaluate` on the bundled model: {results['before']} vs the working tree",
        "",
        "| set | file | identical | difference |",
        "|---|---|---|---|",
    ]
    for name, rows in results["evaluate"].items():
        for row in rows:
            lines.append(
                f"| {name} | {row['file']} | {'yes' if row['identical'] else 'no'} | {row.get('difference', '')} |"
            )
    differences = [row for rows in results["evaluate"].values() for row in rows if not row["identical"]]
    only_predicted = all(
        row["file"] == "predictions.csv"
        and set(row.get("difference", {}).get("differing_columns", {})) == {"predicted"}
        for row in differences
    )
    lines += [""]
    if only_predicted:
        lines += [
            "The only difference is intended: `predictions.csv`'s `predicted` column is now the bundle's class call",
            "(the class-balanced arg-max the bundled model uses, which metrics.json's accuracy and confusion matrix",
            "already scored); before, it was the plain arg-max and disagreed with metrics.json. Every other file is",
            "byte-identical.",
            "",
        ]
    else:
        lines += ["**Differences beyond the `predicted` column: see the table.**", ""]
    lines += [
        "## Imports and start-up",
        "",
        f"* `import {results['imports']['module']}` loads: {results['imports']['heavy_modules_loaded'] or 'none of torch, sklearn, gradio'}",
        f"* `skintriage --help`: median {results['help_median_s']:.2f} s over {len(results['help_seconds'])} fresh processes "
        "(target ≤ 1.5 s)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--before", default="60e250f")
    parser.add_argument("--n", type=int, default=7)
    args = parser.parse_args()
    data_root = args.data_root.resolve()
    sys.path.insert(0, str(REPO / "src"))
    from skintriage.common.paths import DEFAULT_BUNDLE

    results: dict = {
        "before": args.before,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        worktree = temporary / "before"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.before],
            check=True,
            capture_output=True,
        )
        try:
            results["evaluate"] = {}
            for name, arguments in SETS:
                print(f"evaluating {name} before and after ...", flush=True)
                evaluate(
                    src=worktree / "src",
                    checkpoint=worktree / OLD_BUNDLE,
                    data_root=data_root,
                    arguments=arguments,
                    out=temporary / "b" / name,
                )
                evaluate(
                    src=REPO / "src",
                    checkpoint=DEFAULT_BUNDLE,
                    data_root=data_root,
                    arguments=arguments,
                    out=temporary / "a" / name,
                )
                results["evaluate"][name] = compare(temporary / "b" / name, temporary / "a" / name)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=True)
    results["imports"] = heavy_imports("skintriage.triage.referral")
    results["help_seconds"] = help_seconds(args.n)
    results["help_median_s"] = statistics.median(results["help_seconds"])
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = markdown(results)
    (HERE / "results.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
