"""Load test of the demo: N triage requests from concurrent gradio_client clients against `app.py` in a subprocess.

The app is started on a free loopback port (its default host, 127.0.0.1) with its own upload cache, exactly as a
user would (`python app.py`, the bundled model), so the server's resident memory can be read from
/proc/<pid>/status. Each client is a thread with its own `gradio_client.Client`; every request uploads a lesion
photo under its own name (real ISIC 2018 test images from ../shared/data when present, else generated ones), with
clinical context on two requests in three, and calls `/triage` (which always computes Grad-CAM). One warm-up
request is not counted.

Criteria: no error, every response a well-formed triage result; and, when the run reaches `--memory-requests`, the
server's RSS then within 10% of its RSS after the first 100 requests (no growth per request). Latency is reported,
never judged here (shared machines are noisy). Writes load_test.json and load_test.md next to this file (or `--out`).

    python experiments/reliability/load_test.py [--requests 200 --clients 16 --memory-requests 1000]

The run sends max(--requests, --memory-requests) requests; bounded by `--timeout-s` in all (requests not sent by
then count as errors).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # the test harness (tests.helpers) starts the app: one way to run it, tested

from skintriage.common.atomic import atomic_write_text  # noqa: E402
from skintriage.triage.referral import Level  # noqa: E402
from tests.helpers.app_harness import RunningApp, app_process  # noqa: E402

ISIC_TEST = REPO.parent / "shared" / "data" / "ham10000_isic2018_224" / "images" / "isic2018_test"
LEVELS = tuple(Level)  # the engine's levels, in order
RSS_FIRST = 100  # the early memory reading, after this many requests
MAX_RSS_GROWTH = 1.10
CONTEXTS = (  # (age, site, findings) cycled over requests: none, some, many
    (None, None, []),
    (72, "face", ["Asymptomatic (not tender)"]),
    (83, "scalp", ["Expanding rapidly (within 3 months)", "Immune suppression"]),
)


@dataclass
class Outcome:
    latency_s: float
    level: str | None = None
    error: str | None = None


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    rss_kib: dict[int, int] = field(default_factory=dict)  # completed requests -> server VmRSS
    wall_s: float = 0.0
    not_sent: int = 0


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of process `pid` from /proc/<pid>/status, in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def image_pool(scratch: Path, count: int, source: Path = ISIC_TEST) -> tuple[list[Path], str]:
    """Up to `count` lesion photos: the real ISIC 2018 test images when present, else generated blobs."""
    real = sorted(source.glob("*.jpg"))[:count] if source.is_dir() else []
    if real:
        return real, f"ISIC 2018 test images ({len(real)} distinct)"
    folder = scratch / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = []
    for i in range(min(count, 64)):
        yy, xx = np.mgrid[0:224, 0:224]
        radius = rng.uniform(40, 90)
        inside = (yy - 112) ** 2 + (xx - 112) ** 2 < radius**2
        rgb = np.where(inside[..., None], rng.integers(40, 140, 3), rng.integers(170, 240, 3))
        rgb = np.clip(rgb + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
        pool.append(folder / f"generated_{i:03d}.jpg")
        Image.fromarray(rgb).save(pool[-1], quality=92)
    return pool, f"generated images ({len(pool)} distinct; no ISIC images at {source})"


def check_triage(outputs: Sequence) -> str:
    """The referral level of a `/triage` result, or ValueError if it is not a well-formed one."""
    if len(outputs) != 5:
        raise ValueError(f"{len(outputs)} outputs, expected 5")
    card, label, overlay, _guidance, raw = outputs
    level = raw["referral"]["level"]
    if level not in LEVELS:
        raise ValueError(f"referral level {level!r}")
    if f'data-level="{level}"' not in card or not raw["referral"]["reasons"]:
        raise ValueError("the card does not show the decision")
    if len(label["confidences"]) != 5 or abs(sum(raw["probabilities"].values()) - 1) > 1e-6:
        raise ValueError("malformed probabilities")
    if not overlay.startswith('<img src="data:image/webp;base64,') or "Grad-CAM" not in overlay:
        raise ValueError("no Grad-CAM overlay")
    return level


def run_load(
    app: RunningApp,
    requests: int,
    clients: int,
    pool: Sequence[Path],
    scratch: Path,
    *,
    rss_at: Sequence[int] = (),
    timeout_s: float = 1800.0,
    progress: bool = True,
) -> LoadResult:
    """Send `requests` triage requests from `clients` threads, each with its own Client; read RSS at `rss_at`."""
    from gradio_client import Client, handle_file

    result = LoadResult()
    lock = threading.Lock()
    indices = itertools.count()
    bar = tqdm(total=requests, desc="triage requests", unit="req", disable=not progress)
    deadline = time.monotonic() + timeout_s

    def one(client: Client, i: int) -> Outcome:
        upload = scratch / f"upload_{i:05d}.jpg"  # own name: no two requests share a cached upload
        shutil.copyfile(pool[i % len(pool)], upload)
        age, site, flags = CONTEXTS[i % len(CONTEXTS)]
        started = time.perf_counter()
        try:
            outputs = client.predict(handle_file(str(upload)), age, site, flags, api_name="/triage")
            return Outcome(time.perf_counter() - started, level=check_triage(outputs))
        except Exception as error:  # every failure is a counted outcome
            return Outcome(time.perf_counter() - started, error=f"{type(error).__name__}: {error}"[:300])
        finally:
            upload.unlink(missing_ok=True)

    def worker(client: Client) -> None:
        while (i := next(indices)) < requests and time.monotonic() < deadline:
            outcome = one(client, i)
            with lock:
                result.outcomes.append(outcome)
                done = len(result.outcomes)
                if done in rss_at:
                    result.rss_kib[done] = rss_kib(app.pid)
            bar.update()

    connected = [Client(app.url, verbose=False, download_files=False) for _ in range(clients)]
    check_triage(connected[0].predict(handle_file(str(pool[0])), None, None, [], api_name="/triage"))  # warm-up
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(client,), daemon=True) for client in connected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 120))
    result.wall_s = time.perf_counter() - started
    bar.close()
    result.not_sent = requests - len(result.outcomes)
    return result


def machine_info() -> dict:
    import gradio
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gradio": gradio.__version__,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def summarize(result: LoadResult, *, requests: int, clients: int, memory_requests: int, images: str) -> dict:
    latencies = np.array([o.latency_s for o in result.outcomes if o.error is None]) * 1000
    errors = [o.error for o in result.outcomes if o.error is not None]
    pct = {f"p{q}": round(float(np.percentile(latencies, q)), 1) if latencies.size else None for q in (50, 95, 99)}
    rss_first = result.rss_kib.get(RSS_FIRST)
    rss_last = result.rss_kib.get(memory_requests) if memory_requests else None
    ratio = round(rss_last / rss_first, 3) if rss_first and rss_last else None
    criteria = {"no_errors": not errors and result.not_sent == 0}
    if memory_requests:
        criteria["rss_within_10_percent"] = ratio is not None and ratio <= MAX_RSS_GROWTH
    return {
        "requests": requests,
        "completed": len(result.outcomes),
        "clients": clients,
        "errors": len(errors) + result.not_sent,
        "error_examples": sorted(Counter(errors).items(), key=lambda kv: -kv[1])[:10],
        "levels": dict(Counter(o.level for o in result.outcomes if o.level is not None)),
        "latency_ms": {**pct, "max": round(float(latencies.max()), 1) if latencies.size else None},
        "wall_s": round(result.wall_s, 1),
        "throughput_rps": round(len(result.outcomes) / result.wall_s, 2) if result.wall_s else None,
        "rss_mib": {str(k): round(v / 1024, 1) for k, v in sorted(result.rss_kib.items())},
        "rss_after_first_mib": None if rss_first is None else round(rss_first / 1024, 1),
        "rss_after_last_mib": None if rss_last is None else round(rss_last / 1024, 1),
        "rss_ratio": ratio,
        "memory_requests": memory_requests,
        "images": images,
        "criteria": criteria,
        "passed": all(criteria.values()),
        "machine": machine_info(),
    }


def markdown(summary: dict) -> str:
    lat, m = summary["latency_ms"], summary["machine"]
    mem = summary["memory_requests"]
    rows = [
        ("requests (completed)", f"{summary['requests']} ({summary['completed']})"),
        ("concurrent clients", summary["clients"]),
        ("errors", summary["errors"]),
        ("referral levels", ", ".join(f"{k} {v}" for k, v in sorted(summary["levels"].items()))),
        ("latency p50 / p95 / p99 / max (ms)", f"{lat['p50']} / {lat['p95']} / {lat['p99']} / {lat['max']}"),
        ("throughput (requests/s)", summary["throughput_rps"]),
    ]
    if mem:
        rows += [
            (f"server RSS after {RSS_FIRST} requests (MiB)", summary["rss_after_first_mib"]),
            (f"server RSS after {mem} requests (MiB)", summary["rss_after_last_mib"]),
            (f"RSS ratio {mem} / {RSS_FIRST} (criterion ≤ {MAX_RSS_GROWTH})", summary["rss_ratio"]),
        ]
    rows += [
        ("criteria", ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in summary["criteria"].items())),
        ("images", summary["images"]),
        ("machine", f"{m['cpu']}, {m['cpu_count']} CPUs, load {m['load_average_1m_at_end']} at the end"),
        ("software", f"{m['platform']}, Python {m['python']}, torch {m['torch']}, gradio {m['gradio']}"),
    ]
    series = ", ".join(f"{k}: {v}" for k, v in summary["rss_mib"].items())
    return "\n".join(
        [
            "# Demo load test",
            "",
            "`python experiments/reliability/load_test.py` (see its docstring): `/triage` requests with Grad-CAM, each",
            "client a thread with its own `gradio_client.Client`, against `app.py` (concurrency limit 2) in a",
            "subprocess on 127.0.0.1. Latency is per request as the client sees it (upload, queue wait, inference).",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
            f"Server RSS (MiB) by completed requests: {series or 'not read'}.",
            "",
        ]
    )


def run(args: argparse.Namespace) -> dict:
    """Start the app, load it, stop it; the summary `summarize` makes."""
    total = max(args.requests, args.memory_requests)
    rss_at = {*range(RSS_FIRST, total + 1, RSS_FIRST), total}  # every 100 requests, and at the end
    with tempfile.TemporaryDirectory(prefix="skintriage-load-") as scratch_name:
        scratch = Path(scratch_name)
        pool, images = image_pool(scratch, total)
        app_args = ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
        env = {"GRADIO_TEMP_DIR": str(scratch / "gradio-cache")}
        with app_process([*app_args, "--examples", str(scratch / "no-examples")], cwd=REPO, env=env) as app:
            result = run_load(
                app,
                total,
                args.clients,
                pool,
                scratch,
                rss_at=rss_at,
                timeout_s=args.timeout_s,
                progress=not args.no_progress,
            )
    memory_requests = args.memory_requests if args.memory_requests >= RSS_FIRST else 0
    return summarize(result, requests=total, clients=args.clients, memory_requests=memory_requests, images=images)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="Requests to send (at least).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients (threads).")
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=1000,
        help=f"Run this many requests in all and compare the server's RSS then with after {RSS_FIRST} (0: skip).",
    )
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="Bound on the whole run.")
    parser.add_argument("--checkpoint", type=Path, default=None, help="Model bundle (default: the app's).")
    parser.add_argument("--out", type=Path, default=HERE, help="Folder for load_test.json and load_test.md.")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    atomic_write_text(args.out / "load_test.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(args.out / "load_test.md", markdown(summary))
    print(markdown(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
