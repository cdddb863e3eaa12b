"""How the model's cost scales with input size: batch-1 latency and batched throughput at 96..224 px.

Only the network is timed (``inference.forward``: logits and embedding, ``inference_mode``), because
it is what grows with the input; decoding and preprocessing of the 224 px benchmark JPEGs barely
change with the output size. The same architecture is built for each size; only 128 px carries the
bundled weights, the others are randomly initialised, which does not change the arithmetic a
convolutional network does (no data-dependent branches).
"""

from __future__ import annotations

import torch

from skintriage.common.timing import interleaved
from skintriage.inference.batch import forward
from skintriage.model.bundle import Bundle
from skintriage.model.registry import create_model

SIZES = (96, 128, 160, 192, 224)
BATCH_SIZES = (1, 8, 32, 64)
SINGLES_PER_RUN = 4  # batch-1 calls per timed run, so one run is long enough to time reliably


def model_for_size(bundle: Bundle, size: int) -> tuple[torch.nn.Module, bool]:
    """The bundled model at its own size, else the same architecture with random weights; and which it is."""
    config = bundle.model.config
    if size == bundle.metadata.preprocessing.input_size:
        return bundle.model.eval(), True
    model = create_model(config.name, num_classes=config.num_classes, input_size=size, stem=config.stem)
    return model.eval(), False


def scaling(
    bundle: Bundle,
    *,
    sizes: tuple[int, ...] = SIZES,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    warmup: int,
    repeats: int,
    latency_repeats: int,
    progress: bool = True,
) -> dict:
    """Per size: batch-1 latency (p50/p95 ms) and images/s at each batch size, all sizes interleaved."""
    models = {size: model_for_size(bundle, size) for size in sizes}
    inputs = {(size, batch): torch.randn(batch, 3, size, size) for size in sizes for batch in batch_sizes}

    def run(size: int, batch: int, times: int = 1) -> None:
        with torch.inference_mode():
            for _ in range(times):
                forward(models[size][0], inputs[(size, batch)])

    latency = interleaved(
        {str(size): (lambda r, size=size: run(size, 1)) for size in sizes},
        warmup=warmup,
        repeats=latency_repeats,
        description="scaling latency",
        progress=progress,
    )
    batched = {(size, batch): f"{size}/{batch}" for size in sizes for batch in batch_sizes}
    throughput = interleaved(
        {
            label: (lambda r, size=size, batch=batch: run(size, batch, SINGLES_PER_RUN if batch == 1 else 1))
            for (size, batch), label in batched.items()
        },
        warmup=warmup,
        repeats=repeats,
        items={label: (SINGLES_PER_RUN if batch == 1 else batch) for (size, batch), label in batched.items()},
        description="scaling throughput",
        progress=progress,
    )
    rows = []
    for size in sizes:
        rows.append(
            {
                "input_size": size,
                "bundled_weights": models[size][1],
                "latency_batch_1": latency[str(size)].latency_ms(),
                "images_per_s": {str(batch): throughput[batched[(size, batch)]].per_second for batch in batch_sizes},
            }
        )
    return {
        "what": "model forward only (logits + embedding), torch.inference_mode, float32",
        "weights": "bundled weights at the bundle's input size; random weights of the same architecture otherwise",
        "batch_sizes": list(batch_sizes),
        "rows": rows,
    }
