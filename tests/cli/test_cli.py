"""The `skintriage data` commands, run through the real Typer app."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from skintriage.cli import app
from skintriage.data.sources import SOURCES
from tests.helpers import shared_data, write_image

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_data_list_shows_every_source_with_licence_and_how_to_obtain():
    result = run("data", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.output)}
    assert set(listed) == set(SOURCES)
    assert "CC BY-NC 4.0" in listed["ham10000"]["licence"]
    assert "doi.org/10.7910/DVN/DBW86T" in listed["ham10000"]["obtain"]
    table = run("data", "list")
    assert table.exit_code == 0 and "ham10000" in table.output and "dermnet" in table.output


def test_data_list_piped_keeps_every_url_and_fetch_command_on_one_line():
    # CliRunner's output is not a terminal, like a pipe: rich would wrap it at 80 columns, breaking long URLs.
    result = run("data", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    urls = {url for s in SOURCES.values() for url in re.findall(r"https?://[^\s)>\]]+", f"{s.obtain} {s.description}")}
    assert any(len(url) > 80 for url in urls)  # the case this guards: longer than the width rich wraps at
    for url in urls:
        assert any(url in line for line in lines), f"{url} is broken across lines"
    for source in SOURCES.values():
        assert source.description in lines
        assert all(step in lines for step in source.obtain.splitlines())
        if source.fetch:
            assert f"  or: skintriage data fetch {source.name} --dest DIR" in lines


def test_summarize_generated_dermnet_folder(tmp_path):
    for topic, n in (("basal_cell_carcinoma", 6), ("melanocytic_naevus", 8)):
        for i in range(n):
            write_image(tmp_path / "images" / topic / f"{i}.jpg", seed=n * 100 + i)
    result = run("data", "summarize", "dermnet", "--root", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["n_images"] == 14
    assert summary["triage_group"] == {"benign": 8, "other_malignant": 6}
    assert sum(split["n_images"] for split in summary["splits"].values()) == 14
    assert summary["labels"]["Melanocytic naevus"] == {"diagnosis": "nv", "triage_group": "benign", "n": 8}


def test_summarize_reports_a_bad_label_as_an_error_not_a_trace(tmp_path):
    write_image(tmp_path / "images" / "not_a_topic" / "a.jpg")
    result = run("data", "summarize", "dermnet", "--root", str(tmp_path))
    assert result.exit_code == 1
    assert "'Not a topic'" in result.output and "Traceback" not in result.output


def test_unknown_source_and_missing_root_are_clear(tmp_path):
    result = run("data", "summarize", "nosuch", "--root", str(tmp_path))
    assert result.exit_code == 1 and "unknown source 'nosuch'" in result.output
    result = run("data", "summarize", "ham10000", "--root", str(tmp_path / "absent"))
    assert result.exit_code == 1 and "is not a directory" in result.output


def test_fetch_without_a_scripted_download_prints_the_steps(tmp_path):
    result = run("data", "fetch", "dermnet", "--dest", str(tmp_path))
    assert result.exit_code == 1
    assert "no scripted download" in result.output and "dermnetnz.org" in result.output


@pytest.mark.slow
def test_real_ham10000_summary_matches_the_published_counts():
    root = shared_data("ham10000_isic2018_224")
    result = run("data", "summarize", "ham10000", "--root", str(root), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["n_images"] == 5984 and summary["missing_images"] == 0
    assert summary["diagnosis"] == {"akiec": 183, "bcc": 264, "bkl": 583, "df": 60, "mel": 491, "nv": 4323, "vasc": 80}
    assert set(summary["splits"]) == {"train", "val"}
    assert summary["groups"]["shared_lesions_across_splits"] == 0
    assert summary["groups"]["near_identical_images_across_splits"] == 0


def test_real_isic2018_test_summary():
    root = shared_data("ham10000_isic2018_224")
    result = run("data", "summarize", "isic2018_test", "--root", str(root), "--json", "--no-hash-images")
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["n_images"] == 1512 and list(summary["splits"]) == ["test"]
    assert summary["diagnosis"] == {"akiec": 43, "bcc": 93, "bkl": 217, "df": 44, "mel": 171, "nv": 909, "vasc": 35}
    assert summary["split_policy"]["official_split_used"] is True


def test_real_audit_naive_split_of_full_ham10000_leaks_and_exits_2():
    root = shared_data("ham10000_isic2018_224")
    metadata = str(root / "HAM10000_metadata_full_10015.csv")
    naive = run(
        "data",
        "audit",
        "ham10000",
        "--root",
        str(root),
        "--metadata",
        metadata,
        "--split",
        "naive",
        "--no-hash-images",
        "--json",
    )
    assert naive.exit_code == 2
    report = json.loads(naive.output[naive.output.index("{") :])
    assert report["shared_lesions"] > 100 and report["missing_images"] == 4031
    project = run("data", "audit", "ham10000", "--root", str(root), "--metadata", metadata, "--no-hash-images")
    assert project.exit_code == 0
    assert "lesions in more than one split:  0" in project.output
