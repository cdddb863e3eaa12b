"""The benchmark suite in quick mode on generated images: every section runs and reports sane numbers.

Speed targets are not asserted (they depend on the machine and its load); the shape and consistency
of the results are: positive rates, p95 >= p50, ratios equal to ours / reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skintriage.bench.report import RESULTS_JSON, RESULTS_MD, SCALING_PNG
from skintriage.bench.suite import SECTIONS, parse_sections, run_suite
from skintriage.cli import app
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.common.timing import Timing, interleaved, percentile
from skintriage.data.images import ImageDecodeError
from skintriage.data.prefetch import prefetch_decoded
from skintriage.inference.variants import REFERENCE
from skintriage.model.bundle import read_metadata
from tests.helpers import write_image


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "performance"
    results = run_suite(out=out, quick=True, data_root=tmp / "no-real-data", progress=False)
    return results, out


def _latency_row_ok(row: dict) -> None:
    assert 0 < row["p50_ms"] <= row["p95_ms"]
    assert row["min_ms"] <= row["p50_ms"]
    assert row["runs"] >= 1


def _throughput_row_ok(row: dict) -> None:
    assert row["images_per_s"] > 0
    assert row["seconds_min"] <= row["seconds_p50"] <= row["seconds_max"]
    assert math.isclose(row["images_per_s"], row["images_per_run"] / row["seconds_p50"])


def test_quick_suite_writes_every_section(quick_results: tuple[dict, Path]) -> None:
    results, out = quick_results
    on_disk = json.loads((out / RESULTS_JSON).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(results))  # what was returned is what was written
    assert set(on_disk["sections"]) == set(SECTIONS)
    assert on_disk["quick"] is True
    machine = on_disk["machine"]
    assert machine["cores_usable"] >= 1 and machine["torch_threads"] >= 1 and machine["torch"] and machine["cpu"]
    markdown = (out / RESULTS_MD).read_text(encoding="utf-8")
    for heading in ("Latency", "Throughput", "Deployment variants", "Training throughput", "Scaling"):
        assert f"## {heading}" in markdown
    assert (out / SCALING_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporary files


def test_latency_and_throughput_are_consistent(quick_results: tuple[dict, Path]) -> None:
    sections = quick_results[0]["sections"]
    latency = sections["latency"]
    assert latency["images"] == "generated"
    for name in ("without_saliency", "with_saliency"):
        _latency_row_ok(latency[name])
        assert latency[name]["meets_target"] == (latency[name]["p50_ms"] <= latency[name]["target_p50_ms"])
    assert set(latency["stages_p50_ms"]) == {"decode", "preprocess", "forward", "saliency", "postprocess"}
    assert all(ms > 0 for ms in latency["stages_p50_ms"].values())

    throughput = sections["throughput"]
    for name in ("ours", "reference"):
        _throughput_row_ok(throughput[name])
    assert math.isclose(
        throughput["ratio"], throughput["ours"]["images_per_s"] / throughput["reference"]["images_per_s"]
    )
    assert all(rate > 0 for rate in throughput["forward_only"].values())


def test_variants_training_and_scaling_are_consistent(quick_results: tuple[dict, Path]) -> None:
    sections = quick_results[0]["sections"]
    variants = sections["variants"]
    metadata = read_metadata(DEFAULT_BUNDLE)
    assert variants["default_variant"] == (metadata.default_variant or REFERENCE)
    assert set(variants["latency"]) | set(variants["skipped"]) == {REFERENCE, *(metadata.variants or {})}
    for name in variants["latency"]:
        _latency_row_ok(variants["latency"][name])
        _throughput_row_ok(variants["throughput"][name])
    for name, recorded in variants["recorded"].items():  # copied from model.json, not measured here
        assert (
            recorded["validation_level_agreement"]
            == metadata.variants[name].parity["sets"]["validation"]["level_agreement"]
        )
    assert all(ms > 0 for ms in variants["torch_forward_batch_1_ms"].values())

    training = sections["training"]
    assert training["images"] == "generated"
    for name in ("ours", "reference", "model_only"):
        _throughput_row_ok(training[name])
    assert math.isclose(training["ratio"], training["ours"]["images_per_s"] / training["reference"]["images_per_s"])
    assert math.isclose(
        training["ours_over_model_only"], training["ours"]["images_per_s"] / training["model_only"]["images_per_s"]
    )

    scaling = sections["scaling"]
    assert [row["input_size"] for row in scaling["rows"]] == [96, 128]
    size = metadata.preprocessing.input_size  # the bundle's own size: its weights; any other: random weights
    assert [row["bundled_weights"] for row in scaling["rows"]] == [row["input_size"] == size for row in scaling["rows"]]
    for row in scaling["rows"]:
        _latency_row_ok(row["latency_batch_1"])
        assert set(row["images_per_s"]) == {str(b) for b in scaling["batch_sizes"]}
        assert all(rate > 0 for rate in row["images_per_s"].values())


def test_cli_runs_one_section(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "--quick", "--only", "latency", "--out", str(tmp_path), "--data-root", str(tmp_path / "none")]
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / RESULTS_JSON).read_text(encoding="utf-8"))["sections"]) == {"latency"}
    assert not (tmp_path / SCALING_PNG).exists()
    bad = CliRunner().invoke(app, ["bench", "--only", "latency,speed", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "speed" in bad.output


def test_sections_and_timing_helpers() -> None:
    assert parse_sections(None) == list(SECTIONS)
    assert parse_sections("scaling, latency") == ["latency", "scaling"]  # suite order, spaces ignored
    with pytest.raises(ValueError, match="warp"):
        parse_sections("warp")
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    timing = Timing((0.5, 1.0, 2.0), items=4)
    assert timing.per_second == 4.0 and timing.p95 >= timing.p50
    order: list[str] = []
    timings = interleaved(
        {"a": lambda r: order.append("a"), "b": lambda r: order.append("b")}, warmup=1, repeats=2, progress=False
    )
    assert order == ["a", "b", "b", "a", "a", "b"]  # alternating, the first rotating each round
    assert [len(t.seconds) for t in timings.values()] == [2, 2]  # warm-up not timed


def test_prefetch_keeps_order_and_defers_errors(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths.insert(2, broken)
    seen = []
    for path, decoded in prefetch_decoded(paths, workers=2, ahead=2):
        try:
            seen.append((path, decoded.result().size))
        except ImageDecodeError as error:
            seen.append((path, str(error)))
    assert [p for p, _ in seen] == paths
    assert "broken.jpg" in seen[2][1] and seen[0][1] == (32, 24)
    with pytest.raises(ValueError):
        next(prefetch_decoded(paths, ahead=0))
