"""Writing the benchmark's results: ``results.json`` (every number), ``results.md`` (tables) and ``scaling.png``.

Timings mean nothing without the machine they were taken on, so the JSON and the markdown both start
with the CPU model, core count, thread settings and library versions. All files are written
atomically: an interrupted run leaves the previous complete results, not half a table.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from skintriage.common.atomic import atomic_path, atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SCALING_PNG = "scaling.png"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the timings depend on: CPU, usable cores, torch version and threads, and the relevant env vars."""
    import numpy
    import PIL
    import torchvision

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores_usable": usable,
        "cores_total": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _loads(values: list[float] | None) -> str:
    return ", ".join(f"{x:.2f}" for x in values) if values else "n/a"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def latency_markdown(section: dict) -> list[str]:
    lines = [
        "## Latency, batch 1: bytes -> decode_image -> Predictor.predict",
        "",
        f"{section['distinct_images']} distinct images ({section['images']}), {section['warmup']} warm-up rounds.",
        "",
        "| path | p50 ms | p95 ms | mean ms | runs | target p50 | met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("without_saliency", "with_saliency"):
        row = section[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {_f(row['p50_ms'])} | {_f(row['p95_ms'])} | {_f(row['mean_ms'])} | "
            f"{row['runs']} | ≤ {_f(row['target_p50_ms'], 0)} | {_ok(row['meets_target'])} |"
        )
    lines += ["", "Stages (p50 of each, timed on their own in the same loop):", ""]
    lines += ["| stage | p50 ms |", "|---|---:|"]
    lines += [f"| {name} | {_f(ms, 2)} |" for name, ms in section["stages_p50_ms"].items()]
    lines += ["", "`saliency` replaces `forward` when Grad-CAM is asked for (a forward and a backward pass).", ""]
    return lines


def throughput_markdown(section: dict) -> list[str]:
    ours, reference = section["ours"], section["reference"]
    lines = [
        "## Throughput: folder prediction",
        "",
        f"{section['folder_images']} images ({section['images']}); ours = `Predictor.predict_files` "
        f"(batch {section['batch_size']}, full referral output), reference = PIL + torchvision transforms + "
        "eager model, batch 1 (softmax only).",
        "",
        "| path | images/s (median run) | runs |",
        "|---|---:|---:|",
        f"| ours | {_f(ours['images_per_s'])} | {ours['runs']} |",
        f"| reference | {_f(reference['images_per_s'])} | {reference['runs']} |",
        "",
        f"Ratio ours / reference: **{section['ratio']:.2f}x** (target ≥ {section['target_ratio']:.0f}x: "
        f"{_ok(section['meets_target'])}).",
        "",
        "Ours decodes and preprocesses the next images in a background thread and runs the weights in "
        "channels-last memory format (both adopted after this benchmark measured them).",
        "",
        "Bare forward pass (images/s), memory layouts side by side:",
        "",
        "| variant | images/s |",
        "|---|---:|",
    ]
    lines += [f"| {name.replace('_', ' ')} | {_f(value)} |" for name, value in section["forward_only"].items()]
    return [*lines, ""]


def variants_markdown(section: dict) -> list[str]:
    lines = [
        "## Deployment variants, each at the thresholds fitted for it",
        "",
        f"Default variant (`Predictor.load()`, the demo, `skintriage predict`): **{section['default_variant']}**. "
        "Latency: bytes -> decode -> predict, batch 1, no saliency; folder: `predict_files`, batch 32. Parity: what "
        "`skintriage export --variant` recorded against PyTorch float32 on the validation split.",
        "",
        "| variant | latency p50 ms | latency p95 ms | folder images/s | validation level agreement | max abs dp | "
        "admissible |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, latency in section["latency"].items():
        throughput = section["throughput"][name]
        recorded = section["recorded"].get(name)
        agreement = "reference" if recorded is None else f"{recorded['validation_level_agreement']:.2%}"
        moved = "" if recorded is None else f"{recorded['validation_max_abs_probability']:.1e}"
        admissible = "" if recorded is None else _ok(bool(recorded["admissible"]))
        lines.append(
            f"| {name} | {_f(latency['p50_ms'])} | {_f(latency['p95_ms'])} | {_f(throughput['images_per_s'])} | "
            f"{agreement} | {moved} | {admissible} |"
        )
    for name, why in section["skipped"].items():
        lines.append(f"| {name} | not run here: {why} | | | | | |")
    bf16 = section["torch_forward_batch_1_ms"]
    native = {True: "has", False: "lacks", None: "may lack"}[section["cpu_has_native_bfloat16"]]
    lines += [
        "",
        f"PyTorch batch-1 forward: float32 {_f(bf16['float32'], 2)} ms, bfloat16 autocast {_f(bf16['bfloat16'], 2)} ms "
        f"(this CPU {native} native bfloat16 instructions).",
        "",
    ]
    return lines


def training_markdown(section: dict) -> list[str]:
    config = section["config"]
    lines = [
        "## Training throughput",
        "",
        f"{config['model']} at {config['input_size']} px, batch {config['batch_size']}, {config['optimizer']}, "
        f"EMA {config['ema_decay']}, imbalance {config['imbalance']}, decode cache {config['cache_side']} px; "
        f"{section['steps_per_run']} steps per timed run on {section['images']} images ({section['device']}).",
        "",
        "| path | images/s (median run) | runs |",
        "|---|---:|---:|",
    ]
    for name in ("ours", "reference", "model_only"):
        lines.append(f"| {name.replace('_', ' ')} | {_f(section[name]['images_per_s'])} | {section[name]['runs']} |")
    lines += [
        "",
        f"Ratio ours / reference: **{section['ratio']:.2f}x** (target ≥ {section['target_ratio']}x: "
        f"{_ok(section['meets_target'])}); ours / model only: {section['ours_over_model_only']:.2f} "
        "(1.0 = the data pipeline costs nothing).",
        "",
    ]
    bf16 = section.get("bfloat16_autocast") or {}
    if "skipped" in bf16:
        lines += [f"bfloat16 autocast: not timed: {bf16['skipped']}.", ""]
    elif bf16:
        lines += [
            f"Model only under bfloat16 autocast: {_f(bf16['bfloat16']['images_per_s'])} images/s vs float32 "
            f"{_f(bf16['float32']['images_per_s'])}.",
            "",
        ]
    return lines


def scaling_markdown(section: dict) -> list[str]:
    batches = section["batch_sizes"]
    lines = [
        "## Scaling with input size",
        "",
        f"{section['what']}; {section['weights']}. Plot: `{SCALING_PNG}`.",
        "",
        "| input px | weights | latency b1 p50 ms | p95 ms | " + " | ".join(f"b{b} img/s" for b in batches) + " |",
        "|---:|---|---:|---:|" + "---:|" * len(batches),
    ]
    for row in section["rows"]:
        latency = row["latency_batch_1"]
        rates = " | ".join(_f(row["images_per_s"][str(b)]) for b in batches)
        weights = "bundled" if row["bundled_weights"] else "random"
        lines.append(
            f"| {row['input_size']} | {weights} | {_f(latency['p50_ms'])} | {_f(latency['p95_ms'])} | {rates} |"
        )
    return [*lines, ""]


SECTION_WRITERS = {
    "latency": latency_markdown,
    "throughput": throughput_markdown,
    "variants": variants_markdown,
    "training": training_markdown,
    "scaling": scaling_markdown,
}


def markdown(results: dict) -> str:
    """The whole report as markdown: machine, settings, then one block per section that ran."""
    machine = results["machine"]
    lines = [
        "# Performance benchmarks",
        "",
        f"Written by `skintriage bench{' --quick' if results['quick'] else ''}`; every figure is a median over "
        "repeated runs after warm-up, and every comparison was measured in the same run, alternating the "
        "candidates.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores_usable']} usable cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads (load average at start: "
        f"{_loads(machine['load_average_at_start'])}, at end: {_loads(results.get('load_average_at_end'))}; "
        "a load above the core count means other work shared the cores and the figures are pessimistic). "
        f"Default variant: {results.get('variant', 'torch-float32')}. Total time: {results['seconds']:.0f} s.",
        "",
    ]
    for name, writer in SECTION_WRITERS.items():
        if name in results["sections"]:
            lines += writer(results["sections"][name])
    return "\n".join(lines)


def plot_scaling(section: dict, path: Path) -> Path:
    """Two panels: batch-1 latency vs input size, and images/s vs input size per batch size."""
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen, no global figure registry to close

    sizes = [row["input_size"] for row in section["rows"]]
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    p50 = [row["latency_batch_1"]["p50_ms"] for row in section["rows"]]
    p95 = [row["latency_batch_1"]["p95_ms"] for row in section["rows"]]
    left.plot(sizes, p50, marker="o", label="p50")
    left.plot(sizes, p95, marker="o", linestyle="--", label="p95")
    left.set(xlabel="input size (px)", ylabel="ms", title="Latency, batch 1 (forward pass)", xticks=sizes)
    left.legend()
    for batch in section["batch_sizes"]:
        right.plot(
            sizes, [row["images_per_s"][str(batch)] for row in section["rows"]], marker="o", label=f"batch {batch}"
        )
    right.set(xlabel="input size (px)", ylabel="images/s", title="Throughput (forward pass)", xticks=sizes)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


def write_results(results: dict, out: Path) -> list[Path]:
    """Write results.json, results.md and (when scaling ran) scaling.png into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [
        atomic_write_text(out / RESULTS_JSON, json.dumps(results, indent=2) + "\n"),
        atomic_write_text(out / RESULTS_MD, markdown(results)),
    ]
    if "scaling" in results["sections"]:
        written.append(plot_scaling(results["sections"]["scaling"], out / SCALING_PNG))
    return written
