"""How long the ``skintriage`` commands that need no model take to start, before and after the lazy imports.

Each command is run as a fresh subprocess N times (default 5) for three candidates, alternated within every
repetition so that other load on the machine falls on all of them alike:

* **before**: ``src/skintriage/cli.py`` as committed at ``--ref`` (default ``HEAD``), copied to a temporary
  folder and run with ``python -P FILE ARGS``;
* **after**: the working tree's ``src/skintriage/cli.py``, run the same way;
* **after, entry point**: the installed console script (``.venv/bin/skintriage ARGS``), what a user types.

``-P`` keeps the script's folder off ``sys.path``, so the copy imports the installed ``skintriage`` package
exactly as the entry point does. The table gives the median wall-clock seconds; a separate, untimed run of
each command in-process records which heavy libraries it loaded. Every run must exit 0.

Writes ``results.json`` (every timing) and ``results.md`` next to this file. Usage:

    python experiments/cli_startup/run.py [--n 5] [--ref HEAD] [--report-only]

To compare against the code before the change once it is committed, pass that commit as ``--ref``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLI = REPO / "src" / "skintriage" / "cli.py"
ENTRY_POINT = Path(sys.executable).parent / "skintriage"
COMMANDS = (
    ("--help",),
    ("guidance",),
    ("data", "list"),
    ("rules",),
    ("predict", "--help"),
)
HEAVY = ("torch", "gradio", "timm", "albumentations", "sklearn", "matplotlib", "pandas")
# Runs a cli.py file in-process, then prints which HEAVY libraries are in sys.modules (to stderr, as JSON).
PROBE = """
import json, runpy, sys
file, *args = sys.argv[1:]
sys.argv = [file, *args]
try:
    runpy.run_path(file, run_name="__main__")
except SystemExit as stop:
    assert not stop.code, f"exit status {stop.code}"
print("PROBE" + json.dumps([m for m in HEAVY if m in sys.modules]), file=sys.stderr)
"""


def command_line(candidate: str, cli_files: dict[str, Path], args: tuple[str, ...]) -> list[str]:
    """The argv that runs ``args`` for one candidate."""
    if candidate == "after, entry point":
        return [str(ENTRY_POINT), *args]
    return [sys.executable, "-P", str(cli_files[candidate]), *args]


def time_once(argv: list[str]) -> float:
    """Wall seconds of one run; raises if it fails (a broken command must not look fast)."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def heavy_modules(cli_file: Path, args: tuple[str, ...]) -> list[str]:
    """The HEAVY libraries running ``args`` through ``cli_file`` loads."""
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, str(cli_file), *args], cwd=REPO, capture_output=True, text=True
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("PROBE")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"probe of {cli_file} {args} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("PROBE"))


def committed_cli(ref: str, folder: Path) -> Path:
    """``src/skintriage/cli.py`` as of ``ref``, written into ``folder``."""
    text = subprocess.run(
        ["git", "show", f"{ref}:src/skintriage/cli.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = folder / "cli_before.py"
    path.write_text(text, encoding="utf-8")
    return path


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def loadavg(results: dict, when: str) -> str:
    return " / ".join(f"{x:.2f}" for x in results["machine"][f"loadavg_{when}"])


def markdown(results: dict) -> str:
    """results.md: the medians, the heavy libraries each command loads, and how the figures were taken."""
    candidates = results["candidates"]
    lines = [
        "# CLI start-up time",
        "",
        "Median wall-clock seconds of "
        f"{results['n']} runs of each command as a fresh subprocess (issue 14, the command line). "
        f"Machine: {results['machine']['cpu_count']} CPU cores ({results['machine']['platform']}), "
        f"Python {results['machine']['python']}; load average (1, 5, 15 min) {loadavg(results, 'before')} before "
        f"and {loadavg(results, 'after')} after the runs. The machine was shared with other work (a load above "
        "2 on 2 cores), so the absolute figures are pessimistic for both; the candidates were alternated within "
        "every repetition so that they share the load alike.",
        "",
        f"* **before**: `src/skintriage/cli.py` as of commit {results['ref_commit'][:10]} (`--ref {results['ref']}`), "
        "which imported the checkpoint (torch, timm), config and data modules at module level;",
        "* **after**: the working tree's `cli.py`, which imports them inside the commands that use them;",
        "* **after, entry point**: the same code through `.venv/bin/skintriage`, as a user runs it.",
        "",
        "| command | " + " | ".join(f"{c} (s)" for c in candidates) + " | speed-up | heavy libraries loaded, before "
        "→ after |",
        "|---|" + "---:|" * len(candidates) + "---:|---|",
    ]
    for row in results["commands"]:
        medians = [row["median_s"][c] for c in candidates]
        before, after = row["median_s"]["before"], row["median_s"]["after"]
        loaded = " → ".join(", ".join(row["heavy"][c]) or "none" for c in ("before", "after"))
        cells = " | ".join(f"{m:.2f}" for m in medians)
        lines.append(f"| `skintriage {' '.join(row['args'])}` | {cells} | {before / after:.1f}x | {loaded} |")
    slow = [row for row in results["commands"] if "torch" in row["heavy"]["after"]]
    lines += [""]
    for row in slow:
        lines.append(
            f"`skintriage {' '.join(row['args'])}` still loads torch: `skintriage.triage.referral` imports "
            "`skintriage.triage.uncertainty`, which imports torch and scikit-learn at module level (outside the CLI)."
        )
    lines += [
        "",
        f"Regenerate with `python experiments/cli_startup/run.py --n {results['n']} --ref {results['ref_commit'][:10]}` "
        f"(run {results['date']}, working tree at {results['head_commit'][:10]}"
        f"{' with uncommitted changes' if results['dirty'] else ''}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="Runs per command and candidate.")
    parser.add_argument("--ref", default="HEAD", help="Git revision whose cli.py is the 'before'.")
    parser.add_argument("--report-only", action="store_true", help="Rewrite results.md from results.json; no runs.")
    options = parser.parse_args()
    if options.report_only:
        results = json.loads((HERE / "results.json").read_text(encoding="utf-8"))
        (HERE / "results.md").write_text(markdown(results), encoding="utf-8")
        return

    with tempfile.TemporaryDirectory() as folder:
        cli_files = {"before": committed_cli(options.ref, Path(folder)), "after": CLI}
        candidates = ["before", "after", "after, entry point"]
        loadavg_before = [round(x, 2) for x in os.getloadavg()]
        times: dict[tuple[str, ...], dict[str, list[float]]] = {args: {c: [] for c in candidates} for args in COMMANDS}
        for repetition in range(options.n):
            for args in COMMANDS:
                for candidate in candidates:
                    times[args][candidate].append(time_once(command_line(candidate, cli_files, args)))
            print(f"repetition {repetition + 1}/{options.n} done", file=sys.stderr)
        heavy = {args: {c: heavy_modules(cli_files[c], args) for c in ("before", "after")} for args in COMMANDS}
        loadavg_after = [round(x, 2) for x in os.getloadavg()]

    results = {
        "n": options.n,
        "ref": options.ref,
        "ref_commit": git("rev-parse", options.ref),
        "head_commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "src/skintriage/cli.py")),
        "date": dt.date.today().isoformat(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg_after,
        },
        "candidates": candidates,
        "commands": [
            {
                "args": list(args),
                "median_s": {c: round(statistics.median(times[args][c]), 3) for c in candidates},
                "seconds": {c: [round(t, 3) for t in times[args][c]] for c in candidates},
                "heavy": heavy[args],
            }
            for args in COMMANDS
        ],
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (HERE / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
