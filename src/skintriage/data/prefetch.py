"""Decoding the next images in a background thread while the model works on the current batch.

Folder prediction alternates two kinds of work: decoding files (Pillow's JPEG decoder, which releases
the GIL) and the forward pass (PyTorch kernels, which release it too). Done in turn, the cores idle
in whichever phase uses fewer of them; with a small pool of threads decoding ahead, a batch's images
are usually ready when the previous forward pass ends. The gain is largest for large photos (phone
pictures) and small for the 224 px dermoscopy images of the benchmark, where decoding is cheap; it is
never a loss beyond one thread's overhead, and memory stays bounded by ``ahead`` results (the predictor
prefetches preprocessed model inputs, 200 KB each at 128 px, not the decoded photos).

Results come back in input order, as :class:`concurrent.futures.Future` objects: ``future.result()``
returns the decoded image or re-raises the decoder's error (:class:`~skintriage.data.images.ImageDecodeError`,
``OSError``) at the point the caller reads it, so a caller that handles errors per file keeps doing so::

    for path, decoded in prefetch_decoded(paths):
        try:
            image = decoded.result()
        except ImageDecodeError as error:
            ...
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from skintriage.data.images import decode_image

DEFAULT_AHEAD = 64  # two batches of 32: enough to hide decoding, bounded memory (64 x 224 px RGB = 10 MB)


def _decode(path: Path) -> Image.Image:
    return decode_image(path, name=str(path))


def prefetch_decoded(
    paths: Iterable[Path],
    *,
    workers: int = 1,
    ahead: int = DEFAULT_AHEAD,
    decode: Callable[[Path], Image.Image] = _decode,
) -> Iterator[tuple[Path, Future]]:
    """``(path, future)`` for each path, in order, with up to ``ahead`` files being decoded in the background.

    Stopping the iteration early (``break``, an exception in the caller) cancels what is still queued.
    """
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers ({workers}) and ahead ({ahead}) must be at least 1")
    pending: deque[tuple[Path, Future]] = deque()
    source = iter(paths)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skintriage-decode")
    try:
        for path in source:
            pending.append((path, executor.submit(decode, path)))
            if len(pending) >= ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        for _, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
