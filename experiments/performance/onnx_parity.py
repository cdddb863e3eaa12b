"""Does the ONNX export compute the same thing as the PyTorch model, on every real test image?

Exports the bundle (default: the bundled model) to a temporary ``model.onnx``, runs PyTorch and
onnxruntime over the complete official ISIC 2018 Task 3 test set (1,512 images: the 1,511 scored and
ISIC_0035068), preprocessed exactly as ``skintriage evaluate`` does, and compares the calibrated
probabilities, logits and embeddings image by image. Also records the batch-1 latencies that
``backend="auto"`` measures when it chooses an engine (one machine, at one moment: indicative only).

Writes onnx_parity.json next to this file. Usage:

    python experiments/performance/onnx_parity.py [--checkpoint src/skintriage/model/default] [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

from skintriage.common.atomic import atomic_write_text
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.sources import get_source
from skintriage.inference.backend import choose_backend
from skintriage.inference.batch import bundle_dataset, loader_for
from skintriage.inference.export import DEFAULT_OPSET, export_onnx
from skintriage.inference.onnx_runner import PARITY_TOLERANCE, OnnxRunner, parity
from skintriage.model.bundle import load_bundle

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ISIC_ROOT = "ham10000_isic2018_224"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE / "onnx_parity.json")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    bundle = load_bundle(args.checkpoint)
    manifest = get_source("isic2018_test").load(args.data_root / ISIC_ROOT).with_images()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        path = export_onnx(bundle, Path(scratch) / "model.onnx")
        export_s = time.perf_counter() - started
        size_bytes = path.stat().st_size
        runner = OnnxRunner.load(path, bundle=bundle)
        loader = loader_for(bundle_dataset(bundle, manifest), batch_size=args.batch_size)
        started = time.perf_counter()
        result = parity(bundle, runner, (pixels for pixels, _, _ in loader))
        parity_s = time.perf_counter() - started
        choice = choose_backend(bundle, "auto", onnx_path=path, repeats=20)

    record = {
        "what": "ONNX (onnxruntime, CPU) vs PyTorch outputs of the same bundle on the ISIC 2018 Task 3 test set",
        "model": bundle.metadata.get("name"),
        "weights_sha256": bundle.metadata["weights_sha256"],
        "test_set": {
            "source": "isic2018_test",
            "n_images": result.n_images,
            "n_scored": int((manifest.frame["score_weight"] > 0).sum()),
        },
        "parity": {**result.to_dict(), "tolerance_probability": PARITY_TOLERANCE, "passed": result.ok()},
        "export": {"opset": DEFAULT_OPSET, "size_bytes": size_bytes, "float32": True, "seconds": round(export_s, 1)},
        "batch1_median_ms": choice.timings_ms,
        "auto_choice": choice.name,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "note": "shared with other jobs while measured: latencies are indicative, not a benchmark",
        },
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "seconds_both_backends_over_the_set": round(parity_s, 1),
    }
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(result.summary())
    print(f"batch-1 median latency (ms): {choice.timings_ms}; auto would choose {choice.name}")
    print(f"wrote {args.out}")
    if not result.ok():
        raise SystemExit(f"parity failed: tolerance {PARITY_TOLERANCE} on calibrated probabilities")


if __name__ == "__main__":
    main()
