"""The taxonomy: every map explicit, every unknown label an error that names label and source."""

from __future__ import annotations

import numpy as np
import pytest

from skintriage.data.taxonomy import (
    DIAGNOSES,
    TriageGroup,
    UnknownLabelError,
    is_malignant,
    label_map,
    malignancy_probability,
    malignant_indices,
    normalise_label,
)


def test_four_triage_groups_and_each_diagnosis_in_one_of_them():
    assert [g.value for g in TriageGroup] == ["mcc", "cutaneous_metastasis", "other_malignant", "benign"]
    assert {d.group for d in DIAGNOSES.values()} == set(TriageGroup)
    assert DIAGNOSES["mcc"].group is TriageGroup.MCC
    assert DIAGNOSES["metastasis"].group is TriageGroup.CUTANEOUS_METASTASIS


def test_akiec_is_on_the_malignant_side():
    assert DIAGNOSES["akiec"].group is TriageGroup.OTHER_MALIGNANT


def test_one_malignancy_sum_by_code_and_by_array():
    from skintriage.metrics import malignancy_score

    codes = ["mel", "nv", "akiec", "bkl", "mcc"]
    assert malignant_indices(codes) == [0, 2, 4]
    rows = np.random.default_rng(0).dirichlet(np.ones(len(codes)), size=50)
    by_code = [malignancy_probability(dict(zip(codes, row.tolist(), strict=True))) for row in rows]
    assert malignancy_score(rows, codes).tolist() == by_code  # the same sum, to the bit
    assert malignancy_probability({"mel": 0.6, "bcc": 0.4 + 1e-15, "nv": 0.0}) == 1.0  # capped at 1
    with pytest.raises(ValueError, match="unknown diagnosis codes"):
        malignancy_probability({"mel": 0.5, "mole": 0.5})
    assert is_malignant("other_malignant") and is_malignant(TriageGroup.MCC) and not is_malignant("benign")


@pytest.mark.parametrize(
    ("map_name", "raw", "code"),
    [
        ("isic2018", "akiec", "akiec"),
        ("isic2018", "NV", "nv"),
        ("isic2018", "vasc", "vasc"),
        ("pad_ufes_20", "ACK", "akiec"),
        ("pad_ufes_20", "SEK", "bkl"),
        ("pad_ufes_20", "SCC", "scc"),
        ("dermnet", "Amelanotic melanoma", "mel"),
        ("dermnet", "Atypical melanocytic naevus", "nv"),
        ("dermnet", "Sézary syndrome", "other_malignant"),
        ("dermnet", "  cherry   ANGIOMA ", "vasc"),
    ],
)
def test_explicit_mappings(map_name, raw, code):
    assert label_map(map_name).diagnosis_for(raw, source="test").code == code


def test_unknown_label_names_the_label_the_source_and_the_row():
    with pytest.raises(UnknownLabelError) as caught:
        label_map("isic2018").diagnosis_for("mole", source="ham10000", where="metadata.csv:7")
    message = str(caught.value)
    assert "'mole'" in message and "'ham10000'" in message and "metadata.csv:7" in message


def test_normalise_label_ignores_case_and_spacing():
    assert normalise_label("  Basal   Cell carcinoma\t") == "basal cell carcinoma"
