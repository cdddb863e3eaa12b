"""The command line starts without the heavy libraries: what `skintriage --help`, `guidance`, `rules` and `data list` load.

Deterministic checks on ``sys.modules`` in a fresh interpreter, not timings (experiments/cli_startup measures
those): importing a model stack for a help text is what made these commands take seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys

from skintriage import cli

HEAVY = ("torch", "gradio", "timm", "albumentations", "matplotlib", "onnxruntime", "sklearn")

# Runs each command in-process, one after another, printing the heavy libraries loaded after each.
RUN_COMMANDS = """
import json, sys
from skintriage.cli import app
heavy = {heavy!r}
loaded = {{"import": [m for m in heavy if m in sys.modules]}}
for args in {commands!r}:
    try:
        app(args, prog_name="skintriage")
    except SystemExit as stop:
        assert not stop.code, (args, stop.code)
    loaded[" ".join(args)] = [m for m in heavy if m in sys.modules]
print("LOADED" + json.dumps(loaded))
"""


def loaded_after(*commands: list[str]) -> dict[str, list[str]]:
    """The heavy libraries in ``sys.modules`` of a fresh interpreter after importing the CLI and after each command."""
    code = RUN_COMMANDS.format(heavy=HEAVY, commands=[list(c) for c in commands])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    return json.loads(line.removeprefix("LOADED"))


def test_importing_the_cli_loads_neither_torch_nor_gradio() -> None:
    code = f"import sys, skintriage.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_guidance_rules_and_data_list_run_without_the_model_stack() -> None:
    loaded = loaded_after(["--help"], ["predict", "--help"], ["guidance"], ["rules"], ["data", "list"])
    assert loaded == {"import": [], "--help": [], "predict --help": [], "guidance": [], "rules": [], "data list": []}


def test_the_constant_copied_into_the_cli_equals_the_librarys() -> None:
    from skintriage.data.splits import SPLIT_STRATEGIES

    assert cli.SPLIT_STRATEGIES == SPLIT_STRATEGIES
