"""The model card, written from a hand-written model.json without training anything.

Every sentence about the model must follow from the metadata: how the weights started, which sources it
was trained on, which source artefacts were removed, which diagnoses it saw; a fact the bundle does not
record is left out, not guessed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from skintriage.model.card import (
    artefact_limitation,
    calibration_method,
    card_details,
    card_metrics,
    card_preprocessing,
    card_title,
    card_unseen_diagnoses,
    initialisation,
    skin_type_limitation,
    write_model_card,
)


def bundle_metadata() -> dict:
    """A model.json as train.finish writes it, with two evaluation sets, trimmed to what a card reads."""
    headline = {
        "n_images": 1511,
        "accuracy": 0.7123,
        "balanced_accuracy": 0.5871,
        "macro_auc": 0.9012,
        "ece": 0.0456,
        "referral": {"n_malignant": 400, "n_benign": 1111, "threshold": 0.2087, "sensitivity": 0.9331,
                     "specificity": 0.6141, "auc": 0.8873},
        "ci95": {"accuracy": [0.6891, 0.7345], "balanced_accuracy": [0.5512, 0.6203],
                 "referral_sensitivity": [0.9075, 0.9550], "referral_auc": [0.8688, 0.9051]},
    }  # fmt: skip
    return {
        "format_version": 1,
        "architecture": {"name": "resnet18", "num_classes": 4, "stem": "standard"},
        "taxonomy_version": "1.0",
        "code_version": "0.1.0+gabc1234",
        "weights_dtype": "float16",
        "name": "benchmark_cpu",
        "classes": ["mel", "bcc", "nv", "bkl"],
        "preprocessing": {
            "input_size": 128,
            "crop_fraction": 1.0,
            "resize": "short side to input_size, centre crop",
            "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "mask_watermark_sources": ["dermnet"],
        },
        "training": {
            "config": {"name": "benchmark_cpu", "sources": [{"name": "ham10000", "root": "ham"}], "epochs": 32},
            "data": {
                "sources": [
                    {"source": "ham10000", "licence": "CC BY-NC 4.0 (non-commercial research, attribution)",
                     "citation": "Tschandl P et al. Sci Data 5, 180161 (2018).", "strategy": "project",
                     "grouped_by": "patient, lesion"},
                    {"source": "dermnet", "licence": "CC BY-NC-ND 3.0 NZ", "citation": "DermNet NZ",
                     "strategy": "project"},
                ],
                "images": {"ham10000/train": 7000, "ham10000/val": 1500, "dermnet/train": 2100},
                "diagnoses_train": {"nv": 5000, "mel": 900, "bkl": 800, "bcc": 400},
                "acquisition": {"dermoscopic": 10015, "clinical": 3000},
            },
            "best_epoch": 27,
        },
        "calibration": {
            "temperature": 1.4321,
            "referral_threshold": 0.2087,
            "target_sensitivity": 0.95,
            "validation": {"n_images": 1500, "ece_before": 0.081, "ece_after": 0.023},
        },
        "metrics": {"validation": headline, "isic2018_test": {**headline, "balanced_accuracy": 0.5432, "ci95": {}}},
        "weights_sha256": "0" * 64,
    }  # fmt: skip


def test_write_model_card(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps(bundle_metadata()), encoding="utf-8")

    path = write_model_card(tmp_path)

    assert path == tmp_path / "MODEL_CARD.md"
    text = path.read_text(encoding="utf-8")
    assert "Merkel cell carcinoma was NOT in the training data" in text
    assert "Cutaneous metastasis was NOT in the training data" in text
    assert "untested" in text
    assert "melanoma, basal cell carcinoma" in text  # what the referral was measured on
    assert "not a diagnostic device" in text.lower()
    assert "CC BY-NC 4.0 (non-commercial research, attribution)" in text
    assert "CC BY-NC-ND 3.0 NZ" in text
    assert "0.587 [0.551, 0.620]" in text  # validation balanced accuracy with its interval
    assert "| 0.543 |" in text  # the test set's own value, without an interval
    assert "0.933 [0.907, 0.955]" in text  # referral sensitivity with its interval
    assert "1.432" in text and "0.209" in text  # temperature and threshold
    assert "skintriage train config.yaml" in text


def test_write_model_card_tolerates_a_bare_bundle(tmp_path: Path) -> None:
    bare = {"format_version": 1, "name": "bare", "classes": ["mel", "nv"], "weights_sha256": "0" * 64}
    (tmp_path / "model.json").write_text(json.dumps(bare), encoding="utf-8")

    text = write_model_card(tmp_path).read_text(encoding="utf-8")

    assert "Merkel cell carcinoma was NOT in the training data" in text
    assert "No evaluation recorded" in text


def metadata_with(*, pretrained: str | None = None, sources: tuple[str, ...] = ("ham10000", "dermnet")) -> dict:
    """The card test's metadata with ``architecture.pretrained`` set (None: not recorded) and only ``sources``."""
    meta = copy.deepcopy(bundle_metadata())
    if pretrained is not None:
        meta["architecture"]["pretrained"] = pretrained
    data = meta["training"]["data"]
    data["sources"] = [{"source": name, "strategy": "project"} for name in sources]
    data["images"] = {key: n for key, n in data["images"].items() if key.split("/")[0] in sources}
    return meta


@pytest.mark.parametrize(
    ("pretrained", "title", "detail"),
    [
        (
            "imagenet",
            "ResNet-18 (ImageNet-pretrained, fine-tuned on ham10000, dermnet)",
            "initialised from ImageNet-trained weights and fine-tuned end to end",
        ),
        ("none", "ResNet-18 (trained from scratch on ham10000, dermnet)", "trained from scratch"),
        (
            "/weights/resnet18_derm.safetensors",
            "ResNet-18 (initialised from `resnet18_derm.safetensors`, fine-tuned on ham10000, dermnet)",
            "initialised from the weights file `resnet18_derm.safetensors` and fine-tuned",
        ),
    ],
)
def test_the_initialisation_sentence_follows_architecture_pretrained(pretrained: str, title: str, detail: str) -> None:
    meta = metadata_with(pretrained=pretrained)

    assert card_title(meta, fallback="bundle") == f"# About the model: {title}; run `benchmark_cpu`"
    assert f"(stem standard), {detail} |" in card_details(meta)
    assert initialisation(meta["architecture"]).detail == detail


def test_an_unrecorded_initialisation_is_left_out_not_guessed() -> None:
    meta = metadata_with(pretrained=None)

    assert initialisation(meta["architecture"]) is None
    assert (
        card_title(meta, fallback="bundle")
        == "# About the model: ResNet-18 (trained on ham10000, dermnet); run `benchmark_cpu`"
    )
    assert "| architecture | resnet18 (stem standard) |" in card_details(meta)
    for claim in ("scratch", "pretrained", "fine-tuned", "initialised"):
        assert claim not in card_title(meta, fallback="bundle") + card_details(meta)


def test_the_title_lists_each_recorded_source_once_and_none_when_unrecorded() -> None:
    twice = metadata_with(pretrained="imagenet", sources=("dermnet", "dermnet", "sd198"))
    assert "(ImageNet-pretrained, fine-tuned on dermnet, sd198)" in card_title(twice, fallback="bundle")
    bare = {"name": "bare", "architecture": {"name": "resnet18", "pretrained": "none"}}
    assert card_title(bare, fallback="bundle") == "# About the model: ResNet-18 (trained from scratch); run `bare`"
    assert card_title({}, fallback="bundle") == "# About the model: bundle; run `bundle`"


def test_the_card_names_only_the_sources_and_artefacts_the_bundle_records(tmp_path: Path) -> None:
    meta = metadata_with(pretrained="imagenet", sources=("ham10000",))
    meta["preprocessing"]["mask_watermark_sources"] = []
    (tmp_path / "model.json").write_text(json.dumps(meta), encoding="utf-8")

    text = write_model_card(tmp_path).read_text(encoding="utf-8").lower()

    for name in ("dermnet", "sd198", "fitzpatrick", "corner_watermark", "caption_bar"):
        assert name not in text, name
    assert "| source artefacts removed | none |" in text
    assert "none was removed, and no training source registers one" in text


def test_masked_artefacts_come_from_the_metadata_and_the_source_registry() -> None:
    meta = metadata_with(sources=("ham10000", "dermnet", "sd198"))
    meta["preprocessing"]["mask_watermark_sources"] = ["dermnet", "dermnet"]  # two DermNet folders

    assert "| source artefacts removed | dermnet: corner_watermark |" in card_preprocessing(meta)
    assert artefact_limitation(meta).startswith(
        "removed at training and evaluation for dermnet: corner_watermark; "
        "left in for sd198: caption_bar, which can be learnt as a shortcut; other artefacts"
    )
    del meta["preprocessing"]["mask_watermark_sources"]  # a bundle that does not say: no row, no claim
    assert "source artefacts removed" not in card_preprocessing(meta)
    assert "removed at training" not in artefact_limitation(meta) and "left in" not in artefact_limitation(meta)


def test_the_unseen_diagnoses_statement_follows_the_training_diagnoses() -> None:
    meta = bundle_metadata()
    assert "but its training data contain none." in card_unseen_diagnoses(meta)

    meta["training"]["data"]["diagnoses_train"]["mcc"] = 3
    text = card_unseen_diagnoses(meta)
    assert "* Merkel cell carcinoma: 3 training images, too few to measure its referral." in text
    assert "**Cutaneous metastasis was NOT in the training data**" in text
    assert "but its training data contain too few to learn them." in text


def test_the_calibration_text_names_only_what_the_bundle_fitted() -> None:
    plain = calibration_method(urgent=False, gate=False)
    assert plain.endswith("malignant validation lesions.")
    assert "urgent" not in plain and "gate" not in plain
    assert calibration_method(urgent=True, gate=False).endswith(
        "The referral engine's urgent threshold (the smallest keeping the target specificity) is fitted on the "
        "same split."
    )
    both = calibration_method(urgent=True, gate=True)
    assert "and the uncertainty gate's thresholds (quantiles of validation scores) are fitted on the same split" in both
    assert both.endswith("; the gate's class statistics on the training split.")


def test_the_metrics_call_validation_optimistic_only_when_it_is_listed() -> None:
    meta = bundle_metadata()
    assert "so its numbers are optimistic" in card_metrics(meta)
    del meta["metrics"]["validation"]
    assert "optimistic" not in card_metrics(meta)


def test_the_skin_type_sentence_gives_the_recorded_fitzpatrick_counts_and_says_unknown_without_them() -> None:
    meta = {"training": {"data": {"skin_types_train": {"I": 10, "II": 20, "V": 3, "VI": 2, "unrecorded": 65},
                                  "skin_type_sources_train": ["fitzpatrick17k"]}}}  # fmt: skip
    text = skin_type_limitation(meta)
    assert "recorded for 35 of the 100 training images" in text
    assert "(by fitzpatrick17k: I 10, II 20, V 3, VI 2; types V-VI 5)" in text
    assert "not measured" in text
    for unrecorded in ({}, {"training": {"data": {"skin_types_train": {"unrecorded": 100}}}}):
        assert skin_type_limitation(unrecorded).startswith("**Skin-type coverage is unknown**")
