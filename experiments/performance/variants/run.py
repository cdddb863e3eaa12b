"""Every deployment variant of the bundled model, exported, refitted at its own precision and compared with float32.

Copies the bundle (the committed one is left as it is), runs ``skintriage export --variant`` for each
variant into the copy, and writes the copy's ``variants`` section of ``model.json`` to ``variants.json``
and a table to ``results.md`` next to this file: probabilities, referral-level agreement and validation
metrics against float32's 95% CIs, speed, and which variant the rule makes the default.

Usage (from the project root; about 10 minutes on 2 CPU cores, ~25 more with torch-bfloat16 on a CPU
without native bfloat16):

    python experiments/performance/variants/run.py [--variants onnx-float32,onnx-int8] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from skintriage.common.atomic import atomic_write_text
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.model.bundle import read_metadata, write_metadata
from skintriage.training.deployment import export_variants

HERE = Path(__file__).resolve().parent


def table(metadata) -> str:
    lines = [
        "# Deployment variants of the bundled model",
        "",
        "Written by `python experiments/performance/variants/run.py`. Each variant's temperature, thresholds and "
        "uncertainty thresholds were refitted on its own validation outputs; levels are compared image by image "
        "with PyTorch float32 at float32's thresholds. Test sets are reported, never used to choose.",
        "",
        f"Default variant by the rule (fastest at batch 1 among the admissible): **{metadata.default_variant}**.",
        "",
        "| variant | file | set | images | max abs dp | mean abs dp | level agreement (own thresholds) | "
        "level agreement (float32 thresholds) | balanced acc. float32 / variant | referral AUC float32 / variant |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in (metadata.variants or {}).items():
        for key, block in entry.parity["sets"].items():
            m = block["metrics"]
            lines.append(
                f"| {name} | {entry.file or '-'} | {key} | {block['n_images']} | {block['max_abs_probability']:.2e} | "
                f"{block['mean_abs_probability']:.2e} | {block['level_agreement']:.2%} ({block['level_disagreements']} "
                f"differ) | {block['level_agreement_with_float32_thresholds']:.2%} | "
                f"{m['balanced_accuracy']['float32']:.3f} / {m['balanced_accuracy']['variant']:.3f} | "
                f"{m['referral_auc']['float32']:.3f} / {m['referral_auc']['variant']:.3f} |"
            )
    lines += ["", "| variant | admissible | why | batch-1 forward ms | batch-32 forward ms | float32 batch 1 / 32 ms |",
              "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for name, entry in (metadata.variants or {}).items():
        speed = entry.speed or {}
        lines.append(
            f"| {name} | {entry.admissible} | {entry.verdict} | {speed.get('batch_1_ms')} | {speed.get('batch_32_ms')} | "
            f"{speed.get('torch-float32_batch_1_ms')} / {speed.get('torch-float32_batch_32_ms')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="onnx-float32,onnx-int8")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skintriage-variants-") as scratch:
        copy = Path(scratch) / "bundle"
        shutil.copytree(args.checkpoint, copy, ignore=shutil.ignore_patterns("*.onnx"))
        metadata = read_metadata(copy).model_copy(update={"variants": None, "default_variant": None})
        write_metadata(copy, metadata)
        export_variants(copy, [name.strip() for name in args.variants.split(",")], data_root=args.data_root)
        metadata = read_metadata(copy)
    record = {
        "seconds": round(time.perf_counter() - started, 1),
        "default_variant": metadata.default_variant,
        "variants": {name: entry.to_json_dict() for name, entry in (metadata.variants or {}).items()},
    }
    atomic_write_text(HERE / "variants.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(HERE / "results.md", table(metadata))
    print(table(metadata))


if __name__ == "__main__":
    main()
