"""Atomic writes: the target is the old file or the new one, never a half-written one."""

from __future__ import annotations

import pytest

from skintriage.common.atomic import atomic_path, atomic_write_text


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old", encoding="utf-8")
    atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"complete old weights")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"complete old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_the_file_gets_the_usual_permissions_not_a_private_temporary_mode(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x", encoding="utf-8")
    target = atomic_write_text(tmp_path / "report.md", "x")
    assert target.stat().st_mode == reference.stat().st_mode


def test_missing_parent_folders_are_created(tmp_path):
    target = atomic_write_text(tmp_path / "eval" / "isic" / "report.md", "# report\n")
    assert target.read_text(encoding="utf-8") == "# report\n"
