"""Prediction benchmarks: single-image latency of the demo's path, folder throughput, and the deployment variants.

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
from pathlib import Path

import torch

from skintriage.bench import references
from skintriage.bench.samples import ImageSet
from skintriage.common.extras import MissingExtraError
from skintriage.common.timing import interleaved, ratio
from skintriage.data.images import ImageDecodeError, decode_image
from skintriage.inference.batch import bundle_normalization, forward
from skintriage.inference.explain import saliency
from skintriage.inference.predictor import FileError, Predictor
from skintriage.inference.variants import REFERENCE, torch_forward
from skintriage.model.bundle import BundleError, load_bundle, read_metadata

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


def variant_comparison(
    bundle_path: Path,
    images: ImageSet,
    *,
    warmup: int,
    repeats: int,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Every variant the bundle is calibrated for, side by side: demo-path latency and folder throughput, each
    with its own thresholds, plus the parity its export recorded and whether bfloat16 pays on this CPU."""
    metadata = read_metadata(bundle_path)
    predictors, skipped = {}, {}
    for name in [REFERENCE, *(metadata.variants or {})]:
        try:
            predictors[name] = Predictor.load(bundle_path, variant=name)
        except (BundleError, MissingExtraError) as error:
            skipped[name] = str(error)
    blobs = [path.read_bytes() for path in images.paths]

    def predict_one(name: str, round_: int) -> None:
        predictors[name].predict(decode_image(blobs[round_ % len(blobs)], name="upload.jpg"))

    single = interleaved(
        {name: (lambda r, name=name: predict_one(name, r)) for name in predictors},
        warmup=warmup,
        repeats=repeats,
        description="variants latency",
        progress=progress,
    )
    folder = interleaved(
        {
            name: (lambda r, name=name: _consume_files(predictors[name], images.paths, batch_size))
            for name in predictors
        },
        warmup=1,
        repeats=max(1, repeats // 10),
        items=dict.fromkeys(predictors, len(images.paths)),
        description="variants throughput",
        progress=progress,
    )
    recorded = {}
    for name, entry in (metadata.variants or {}).items():
        validation = entry.parity["sets"]["validation"] if entry.parity else {}
        recorded[name] = {
            "admissible": entry.admissible,
            "verdict": entry.verdict,
            "validation_level_agreement": validation.get("level_agreement"),
            "validation_max_abs_probability": validation.get("max_abs_probability"),
        }
    reference = predictors[REFERENCE].bundle.model
    size = metadata.preprocessing.input_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    forwards = {p: torch_forward(reference, precision=p) for p in ("float32", "bfloat16")}
    precisions = interleaved(
        {p: (lambda _, f=f: f(pixels)) for p, f in forwards.items()},
        warmup=1,
        repeats=max(3, repeats // 10),
        description="bfloat16",
        progress=progress,
    )
    return {
        "images": images.origin,
        "default_variant": metadata.default_variant or REFERENCE,
        "skipped": skipped,
        "latency": {name: single[name].latency_ms() for name in predictors},
        "throughput": {name: folder[name].throughput() for name in predictors},
        "recorded": recorded,
        "torch_forward_batch_1_ms": {p: round(1e3 * t.p50, 2) for p, t in precisions.items()},
        "cpu_has_native_bfloat16": native_bfloat16(),
    }


def native_bfloat16() -> bool | None:
    """Whether the CPU has bfloat16 instructions (AVX-512 BF16 or AMX); ``None`` where /proc/cpuinfo is absent."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
