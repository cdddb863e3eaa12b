"""Prediction benchmarks: single-image latency of the demo's path, folder throughput, and ONNX vs PyTorch.

*Latency* times what the demo does with an upload: the JPEG's bytes through
:func:`~skintriage.data.images.decode_image` and :meth:`Predictor.predict` (preprocessing, forward pass,
temperature scaling, uncertainty gate, referral), with and without Grad-CAM. Its p50 is also split into
stages, each timed on its own in the same loop, so a miss of the target can be pinned on a stage.

*Throughput* times :meth:`Predictor.predict_files` over a folder against
:func:`~skintriage.bench.references.predict_folder` (batch 1, the obvious loop) on the same files and
the same weights, alternating the two, plus the bare forward pass at batch 1 and 32, contiguous and
channels-last, to show what batching and memory format are worth on this machine.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from skintriage.bench import references
from skintriage.bench.samples import ImageSet
from skintriage.common.extras import ONNX_EXTRA, MissingExtraError, import_optional
from skintriage.common.timing import interleaved, ratio
from skintriage.data.images import ImageDecodeError, decode_image
from skintriage.inference.batch import bundle_normalization, forward
from skintriage.inference.explain import saliency
from skintriage.inference.export import export_onnx
from skintriage.inference.predictor import FileError, Predictor
from skintriage.model.bundle import load_bundle

LATENCY_TARGETS_MS = {"without_saliency": 50.0, "with_saliency": 150.0}
THROUGHPUT_TARGET_RATIO = 3.0


def latency(predictor: Predictor, images: ImageSet, *, warmup: int, repeats: int, progress: bool = True) -> dict:
    """p50/p95 of bytes -> decode -> predict (with and without saliency), and the p50 of each stage."""
    blobs = [path.read_bytes() for path in images.paths]
    decoded = [decode_image(blob) for blob in blobs]
    pixels = [predictor.input_tensor(image) for image in decoded]
    model = predictor.bundle.model.eval()
    with torch.inference_mode():
        outputs = [forward(model, x) for x in pixels]

    def pick(items: list, round_: int):
        return items[round_ % len(items)]

    def full(round_: int, *, with_saliency: bool) -> None:
        image = decode_image(pick(blobs, round_), name="upload.jpg")
        predictor.predict(image, with_saliency=with_saliency)

    def forward_only(round_: int) -> None:  # the predictor's engine where it has a choice (torch or ONNX)
        if hasattr(predictor, "forward"):
            predictor.forward(pick(pixels, round_))
        else:
            with torch.inference_mode():
                forward(model, pick(pixels, round_))

    def saliency_only(round_: int) -> None:  # what predict(with_saliency=True) runs instead of forward
        saliency(
            model,
            pick(pixels, round_),
            target="malignancy",
            malignant_indices=predictor.malignant_indices,
            temperature=predictor.bundle.temperature,
        )

    def post(round_: int) -> None:  # calibration, uncertainty gate, referral, guidance topics
        logits, embedding = pick(outputs, round_)
        predictor._predictions(logits, embedding, [None], [None], [None])

    timings = interleaved(
        {
            "without_saliency": lambda r: full(r, with_saliency=False),
            "with_saliency": lambda r: full(r, with_saliency=True),
            "decode": lambda r: decode_image(pick(blobs, r), name="upload.jpg"),
            "preprocess": lambda r: predictor.input_tensor(pick(decoded, r)),
            "forward": forward_only,
            "saliency": saliency_only,
            "postprocess": post,
        },
        warmup=warmup,
        repeats=repeats,
        description="latency",
        progress=progress,
    )
    result = {"images": images.origin, "distinct_images": len(blobs), "warmup": warmup}
    for name, target in LATENCY_TARGETS_MS.items():
        row = timings[name].latency_ms()
        result[name] = {**row, "target_p50_ms": target, "meets_target": row["p50_ms"] <= target}
    stages = ("decode", "preprocess", "forward", "saliency", "postprocess")
    result["stages_p50_ms"] = {name: timings[name].latency_ms()["p50_ms"] for name in stages}
    return result


def _consume_files(predictor: Predictor, paths: list[Path], batch_size: int) -> None:
    failures = [r for r in predictor.predict_files(paths, batch_size=batch_size) if isinstance(r, FileError)]
    if failures:
        raise ImageDecodeError(f"benchmark images failed to decode: {failures[0].error}")


def throughput(
    predictor: Predictor,
    images: ImageSet,
    *,
    warmup: int,
    repeats: int,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Images/s of ``predict_files`` vs the batch-1 reference, and of the bare forward pass per layout."""
    paths = images.paths
    size = predictor.bundle.metadata.preprocessing.input_size
    reference_model = load_bundle(predictor.bundle.path).model.eval()  # same weights, its own instance
    count = len(paths)
    folder = interleaved(
        {
            "ours": lambda r: _consume_files(predictor, paths, batch_size),
            "reference": lambda r: references.predict_folder(
                reference_model, paths, size=size, normalization=bundle_normalization(predictor.bundle)
            ),
        },
        warmup=warmup,
        repeats=repeats,
        items={"ours": count, "reference": count},
        description="throughput",
        progress=progress,
    )
    ours, reference = folder["ours"].per_second, folder["reference"].per_second
    return {
        "images": images.origin,
        "folder_images": count,
        "batch_size": batch_size,
        "ours": folder["ours"].throughput(),
        "reference": folder["reference"].throughput(),
        "ratio": ratio(ours, reference),
        "target_ratio": THROUGHPUT_TARGET_RATIO,
        "meets_target": ratio(ours, reference) >= THROUGHPUT_TARGET_RATIO,
        "forward_only": forward_layouts(
            predictor.bundle.model,
            size=size,
            batch_size=batch_size,
            warmup=warmup,
            repeats=max(repeats, 3),
            progress=progress,
        ),
    }


def forward_layouts(
    model: torch.nn.Module, *, size: int, batch_size: int, warmup: int, repeats: int, progress: bool = True
) -> dict:
    """Images/s of the bare forward pass at batch 1 and ``batch_size``, contiguous vs channels-last weights and input.

    Whether channels-last pays on a CPU depends on the oneDNN build and the core; measuring it here
    is what decides whether the predictor should use it.
    """
    plain = copy.deepcopy(model).eval()
    channels_last = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    single = torch.randn(1, 3, size, size)
    batch = torch.randn(batch_size, 3, size, size)
    single_cl, batch_cl = (x.contiguous(memory_format=torch.channels_last) for x in (single, batch))
    singles = 8  # batch-1 calls per timed run, so each run is long enough to time reliably

    def run(net: torch.nn.Module, x: torch.Tensor, times: int = 1) -> None:
        with torch.inference_mode():
            for _ in range(times):
                forward(net, x)

    timings = interleaved(
        {
            "batch_1_contiguous": lambda r: run(plain, single, singles),
            "batch_1_channels_last": lambda r: run(channels_last, single_cl, singles),
            f"batch_{batch_size}_contiguous": lambda r: run(plain, batch),
            f"batch_{batch_size}_channels_last": lambda r: run(channels_last, batch_cl),
        },
        warmup=warmup,
        repeats=repeats,
        items={
            "batch_1_contiguous": singles,
            "batch_1_channels_last": singles,
            f"batch_{batch_size}_contiguous": batch_size,
            f"batch_{batch_size}_channels_last": batch_size,
        },
        description="forward layouts",
        progress=progress,
    )
    return {name: timing.per_second for name, timing in timings.items()}


def onnx_comparison(
    bundle_path: Path,
    images: ImageSet,
    *,
    scratch: Path,
    warmup: int,
    repeats: int,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Latency (no saliency) and folder throughput of the ONNX backend vs the PyTorch one, side by side.

    Exports a copy of the bundle (the bundle itself is left untouched). Returns ``{"skipped": why}`` when
    onnxruntime or the exporter's onnx / onnxscript is not installed (the optional ``[onnx]`` extra).
    """
    try:
        import_optional("onnxruntime", extra=ONNX_EXTRA, needed_for="the ONNX benchmark")
        copied = scratch / "onnx_bundle"
        shutil.rmtree(copied, ignore_errors=True)
        shutil.copytree(bundle_path, copied)
        onnx_file = export_onnx(load_bundle(copied))
    except MissingExtraError as error:
        return {"skipped": str(error)}
    backends = {name: Predictor.load(copied, backend=name) for name in ("torch", "onnx")}
    blobs = [path.read_bytes() for path in images.paths]

    def predict_one(name: str, round_: int) -> None:
        backends[name].predict(decode_image(blobs[round_ % len(blobs)], name="upload.jpg"))

    single = interleaved(
        {name: (lambda r, name=name: predict_one(name, r)) for name in backends},
        warmup=warmup,
        repeats=repeats,
        description="onnx latency",
        progress=progress,
    )
    folder = interleaved(
        {name: (lambda r, name=name: _consume_files(backends[name], images.paths, batch_size)) for name in backends},
        warmup=1,
        repeats=max(1, repeats // 10),
        items=dict.fromkeys(backends, len(images.paths)),
        description="onnx throughput",
        progress=progress,
    )
    result = {
        "onnx_file": str(onnx_file.name),
        "backend_reported": {name: getattr(p, "backend", name) for name, p in backends.items()},
        "latency": {name: single[name].latency_ms() for name in backends},
        "throughput": {name: folder[name].throughput() for name in backends},
    }
    result["latency_ratio_p50"] = ratio(single["torch"].p50, single["onnx"].p50)  # > 1: ONNX is faster
    result["throughput_ratio"] = ratio(folder["onnx"].per_second, folder["torch"].per_second)
    return result
