"""``MODEL_CARD.md`` for a bundle, written from its own ``model.json``.

The card is generated, never hand-written, so it cannot drift from the weights it describes. Every
statement about this model (how its weights started, which sources it was trained on, which source
artefacts its preprocessing removed, which diagnoses it saw) is read from the metadata; where a bundle
does not record a fact, the sentence is left out rather than guessed. The one deliberate exception is the
safety statement on Merkel cell carcinoma and metastases: a bundle that does not record its training
diagnoses is described as never having seen them, the safe reading for every dataset this project reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skintriage import DISCLAIMER
from skintriage.common.atomic import atomic_write_text
from skintriage.common.markdown import fmt, fmt_ci, markdown_table
from skintriage.data.sources import SOURCES
from skintriage.data.taxonomy import DIAGNOSES, is_malignant
from skintriage.model.registry import MODELS

MODEL_CARD_FILE = "MODEL_CARD.md"
NOT_IN_TRAINING = {"mcc": "Merkel cell carcinoma", "metastasis": "cutaneous metastasis"}


@dataclass(frozen=True)
class Initialisation:
    """How the weights started, in the words of the card's title and of its details table."""

    short: str  # the title's: "ImageNet-pretrained"
    detail: str  # the details' and limitations': "initialised from ImageNet-trained weights and fine-tuned end to end"
    then: str  # how the title goes on to the training sources: ", fine-tuned on" or " on"


def initialisation(architecture: Mapping[str, Any]) -> Initialisation | None:
    """From ``architecture.pretrained`` ("none", "imagenet" or a weights file); None when the bundle does not record it."""
    pretrained = architecture.get("pretrained")
    if pretrained is None:
        return None
    pretrained = str(pretrained)
    if pretrained == "none":
        return Initialisation(short="trained from scratch", detail="trained from scratch", then=" on")
    if pretrained in ("imagenet", "torchvision"):
        return Initialisation(
            short="ImageNet-pretrained",
            detail="initialised from ImageNet-trained weights and fine-tuned end to end",
            then=", fine-tuned on",
        )
    weights = Path(pretrained).name
    return Initialisation(
        short=f"initialised from `{weights}`",
        detail=f"initialised from the weights file `{weights}` and fine-tuned",
        then=", fine-tuned on",
    )


def card_details(meta: Mapping[str, Any]) -> str:
    architecture = meta.get("architecture", {})
    training = meta.get("training", {})
    start = initialisation(architecture)
    rows = [
        ["name", str(meta.get("name", "unknown"))],
        [
            "architecture",
            f"{architecture.get('name', 'unknown')} (stem {architecture.get('stem', 'n/a')})"
            + (f", {start.detail}" if start else ""),
        ],
        ["classes", ", ".join(f"`{c}`" for c in meta.get("classes", []))],
        ["taxonomy version", str(meta.get("taxonomy_version", "n/a"))],
        ["code version", str(meta.get("code_version", "n/a"))],
        ["best epoch (by validation balanced accuracy)", fmt(training.get("best_epoch"))],
        ["weights", f"{meta.get('weights_dtype', 'n/a')}, SHA-256 `{meta.get('weights_sha256', 'n/a')}`"],
    ]
    return "## Model details\n\n" + markdown_table(header=["field", "value"], rows=rows)


def card_intended_use() -> str:
    return (
        "## Intended use\n\n"
        "* **Research prototype** for studying image-based triage of skin lesions: which lesions a model "
        "would flag for referral, and how reliable that flag is.\n"
        "* Triage **research** and **education** (teaching how such models work and fail).\n"
        "* **Not a diagnostic device.** It must not be used to diagnose, treat or exclude any disease, or to "
        "decide whether a person sees a clinician. It has no regulatory clearance."
    )


def training_data(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """``training.data`` of model.json, or an empty mapping: a bundle saved by hand may lack it."""
    return (meta.get("training") or {}).get("data") or {}


def source_names(meta: Mapping[str, Any]) -> list[str]:
    """The training sources, once each in recorded order (a source read from two folders is recorded twice)."""
    return list(dict.fromkeys(str(s["source"]) for s in training_data(meta).get("sources") or [] if s.get("source")))


def artefact_label(source: str) -> str:
    """E.g. "dermnet: corner_watermark": a source with the artefact its registry entry names."""
    if source not in SOURCES:
        return f"{source}: unknown"
    return f"{source}: {SOURCES[source].artefact or 'no registered artefact'}"


def masked_sources(meta: Mapping[str, Any]) -> list[str] | None:
    """Sources whose registered artefact preprocessing removed, once each (two DermNet folders: one "dermnet").

    None when the bundle does not record ``preprocessing.mask_watermark_sources``: unknown, not "none".
    """
    preprocessing = meta.get("preprocessing") or {}
    if "mask_watermark_sources" not in preprocessing:
        return None
    return list(dict.fromkeys(preprocessing["mask_watermark_sources"] or []))


def masked_artefacts(meta: Mapping[str, Any]) -> list[str] | None:
    """E.g. ["dermnet: corner_watermark", "sd198: caption_bar"]: what preprocessing removed, per source."""
    masked = masked_sources(meta)
    return None if masked is None else [artefact_label(name) for name in masked]


def unmasked_artefacts(meta: Mapping[str, Any]) -> list[str]:
    """Training sources whose registered artefact was left in (a shortcut the model can learn); [] when unrecorded."""
    masked = masked_sources(meta)
    if masked is None:
        return []
    return [
        artefact_label(name)
        for name in source_names(meta)
        if name in SOURCES and SOURCES[name].artefact and name not in masked
    ]


def malignant_class_names(meta: Mapping[str, Any]) -> list[str]:
    """Full names of the malignant classes the model has: what its referral sensitivity was measured on."""
    codes = [c for c in meta.get("classes", []) if c in DIAGNOSES and is_malignant(DIAGNOSES[c].group)]
    return [DIAGNOSES[c].name.lower() for c in codes if c not in NOT_IN_TRAINING]


def card_unseen_diagnoses(meta: Mapping[str, Any]) -> str:
    """The safety statement the card exists for: the target lesions are absent from training, so their referral is untested.

    Written from ``diagnoses_train``, so that a future bundle trained on such images does not carry a
    false statement; a bundle that does not record its training diagnoses is described as unseen,
    the safe reading for every dataset this project uses.
    """
    trained = training_data(meta).get("diagnoses_train") or {}
    counts = {code: int(trained.get(code, 0) or 0) for code in NOT_IN_TRAINING}
    lines = []
    for code, name in NOT_IN_TRAINING.items():
        n = counts[code]
        if n:
            lines.append(f"* {name[0].upper() + name[1:]}: {n} training images, too few to measure its referral.")
        else:
            lines.append(
                f"* **{name[0].upper() + name[1:]} was NOT in the training data**: the model has never seen one."
            )
    measured = ", ".join(malignant_class_names(meta)) or "not recorded"
    return (
        "## Merkel cell carcinoma and cutaneous metastases\n\n" + "\n".join(lines) + "\n\n"
        "The project exists to flag lesions that could be **Merkel cell carcinoma** or a **cutaneous metastasis**, "
        f"but its training data contain {'too few to learn them' if any(counts.values()) else 'none'}. The model does not recognise "
        "these diagnoses: a referral of such a lesion rests entirely on the generic malignant-vs-benign score "
        "(the summed probability of the malignant classes) reaching the threshold. **Its referral of such "
        f"lesions is untested**: the referral sensitivities below were measured on the malignant classes in training "
        f"({measured}) and may not "
        "transfer to lesions that look unlike all of them."
    )


def split_description(policy: Mapping[str, Any]) -> str:
    strategy = str(policy.get("strategy", "n/a"))
    return f"{strategy}; grouped by {policy['grouped_by']}" if policy.get("grouped_by") else strategy


def card_training_data(meta: Mapping[str, Any]) -> str:
    data = training_data(meta)
    sources = [
        [
            str(s.get("source", "?")),
            str(s.get("licence", "n/a")),
            str(s.get("citation", "")),
            split_description(s),
        ]
        for s in data.get("sources", [])
    ]
    parts = [
        "## Training data",
        markdown_table(header=["source", "licence", "citation", "split"], rows=sources)
        if sources
        else "No source list recorded.",
    ]
    if data.get("images"):
        images = [[key, fmt(n)] for key, n in data["images"].items()]
        parts.append(
            "Images per source and split:\n\n" + markdown_table(header=["source/split", "images"], rows=images)
        )
    if data.get("diagnoses_train"):
        diagnoses = [[code, fmt(n)] for code, n in data["diagnoses_train"].items()]
        parts.append(
            "Training images per diagnosis:\n\n" + markdown_table(header=["diagnosis", "images"], rows=diagnoses)
        )
    if data.get("acquisition"):
        acquisition = [[kind, fmt(n)] for kind, n in data["acquisition"].items()]
        parts.append(
            "Images per acquisition type (all splits):\n\n"
            + markdown_table(header=["acquisition", "images"], rows=acquisition)
        )
    return "\n\n".join(parts)


def card_preprocessing(meta: Mapping[str, Any]) -> str:
    p = meta.get("preprocessing", {}) or {}
    normalization = p.get("normalization", {}) or {}
    masked = masked_artefacts(meta)
    rows = [
        ["input size", f"{fmt(p.get('input_size'))} px"],
        ["resize", str(p.get("resize", "n/a"))],
        ["normalisation", f"mean {normalization.get('mean', 'n/a')}, std {normalization.get('std', 'n/a')}"],
    ]
    if masked is not None:
        rows.append(["source artefacts removed", ", ".join(masked) or "none"])
    return "## Preprocessing\n\n" + markdown_table(header=["step", "value"], rows=rows)


def card_calibration(meta: Mapping[str, Any]) -> str:
    c = meta.get("calibration", {}) or {}
    rows = [
        ["temperature", fmt(c.get("temperature"))],
        ["referral threshold (malignancy score)", fmt(c.get("referral_threshold"))],
        ["target sensitivity on validation", fmt(c.get("target_sensitivity"))],
    ]
    rows += [[f"validation {key.replace('_', ' ')}", fmt(value)] for key, value in (c.get("validation") or {}).items()]
    urgent = c.get("urgent") or {}
    if urgent:
        rows += [
            ["urgent threshold (malignancy score)", fmt(urgent.get("threshold"))],
            ["urgent: target specificity on validation", fmt(urgent.get("target_specificity"))],
            ["urgent: validation sensitivity", fmt(urgent.get("validation_sensitivity"))],
            ["urgent: validation specificity", fmt(urgent.get("validation_specificity"))],
        ]
    gate = meta.get("uncertainty") or {}
    if gate:
        rates = gate.get("validation_rates") or {}
        rows += [
            ["uncertainty gate", str(gate.get("method", "n/a"))],
            [
                "out of distribution above (Mahalanobis distance)",
                f"{fmt(gate.get('ood_threshold'))} (validation quantile {fmt(gate.get('ood_quantile'))})",
            ],
            [
                "low confidence above (normalised entropy)",
                f"{fmt(gate.get('entropy_threshold'))} (validation quantile {fmt(gate.get('low_confidence_quantile'))})",
            ],
            ["validation share the model cannot assess", fmt(rates.get("cannot_assess"))],
        ]
    classifier = meta.get("acquisition_classifier") or {}
    if classifier:
        accuracy = classifier.get("validation_accuracy") or {}
        per_type = ", ".join(
            f"{kind} {fmt(v.get('accuracy'))}" for kind, v in (accuracy.get("by_acquisition") or {}).items()
        )
        rows += [
            ["acquisition classifier", str(classifier.get("method", "n/a"))],
            [
                "acquisition classifier: training images",
                ", ".join(f"{k} {fmt(v)}" for k, v in (classifier.get("fitted_on") or {}).items()),
            ],
            ["acquisition classifier: validation accuracy", f"{fmt(accuracy.get('accuracy'))} ({per_type})"],
        ]
    decision = meta.get("decision") or {}
    if decision:
        rows.append(["class call (chosen on validation balanced accuracy)", str(decision.get("rule", "argmax"))])
        rows += [
            [f"validation balanced accuracy, {rule} call", fmt(value)]
            for rule, value in (decision.get("validation_balanced_accuracy") or {}).items()
        ]
    return (
        "## Calibration\n\n"
        + calibration_method(urgent=bool(urgent), gate=bool(gate))
        + "\n\n"
        + markdown_table(header=["quantity", "value"], rows=rows)
        + card_acquisition_calibration(c)
    )


def calibration_method(*, urgent: bool, gate: bool) -> str:
    """How the calibration was fitted, naming the urgent threshold and the uncertainty gate only when the bundle has them."""
    also = [
        *(["the referral engine's urgent threshold (the smallest keeping the target specificity)"] if urgent else []),
        *(["the uncertainty gate's thresholds (quantiles of validation scores)"] if gate else []),
    ]
    text = (
        "Fitted on the validation split only: one temperature for all logits (minimising validation NLL), then "
        "the largest referral threshold that still refers the target share of malignant validation lesions."
    )
    if also:
        fitted = " and ".join(also)
        verb = "are" if len(also) > 1 else "is"
        text += f" {fitted[0].upper() + fitted[1:]} {verb} fitted on the same split"
        text += "; the gate's class statistics on the training split." if gate else "."
    return text


def card_acquisition_calibration(calibration: Mapping[str, Any]) -> str:
    """The per-acquisition temperatures and thresholds (empty for a bundle calibrated before they existed)."""
    entries = calibration.get("by_acquisition") or {}
    if not entries:
        return ""
    rows = []
    for kind, e in entries.items():
        v, urgent = e.get("validation") or {}, e.get("urgent") or {}
        rows.append(
            [
                kind,
                fmt(e.get("temperature")),
                fmt(e.get("referral_threshold")),
                f"{fmt(v.get('referral_sensitivity'))} / {fmt(v.get('referral_specificity'))}",
                fmt(urgent.get("threshold")),
                f"{fmt(urgent.get('validation_sensitivity'))} / {fmt(urgent.get('validation_specificity'))}",
                "pooled values" if e.get("fallback") else fmt(v.get("n_images")),
                str(e.get("fallback") or ""),
            ]
        )
    header = [
        "acquisition",
        "temperature",
        "referral threshold",
        "referral sens. / spec.",
        "urgent threshold",
        "urgent sens. / spec.",
        "validation images",
        "fallback",
    ]
    return (
        "\n\nPer acquisition type: the same fit on each type's validation images only, applied to the type the "
        "user states or the acquisition classifier reads; a type with too few images keeps the pooled values.\n\n"
        + markdown_table(header=header, rows=rows)
    )


def value_with_ci(*, value: Any, ci95: Mapping[str, Sequence[float]] | None, key: str) -> str:
    """A value followed by its bootstrap interval when there is one, in one table cell."""
    interval = fmt_ci(ci95=ci95, key=key)
    return f"{fmt(value)} {interval}".strip()


def card_metrics(meta: Mapping[str, Any]) -> str:
    evaluations = meta.get("metrics", {}) or {}
    if not evaluations:
        return "## Metrics\n\nNo evaluation recorded in this bundle."
    header = [
        "evaluation set",
        "images",
        "accuracy",
        "balanced accuracy",
        "macro AUC",
        "ECE",
        "referral sensitivity",
        "referral specificity",
        "referral AUC",
    ]
    rows = []
    for name, m in evaluations.items():
        ci, referral = m.get("ci95"), m.get("referral", {}) or {}
        rows.append(
            [name, fmt(m.get("n_images"))]
            + [
                value_with_ci(value=m.get(k), ci95=ci, key=k)
                for k in ("accuracy", "balanced_accuracy", "macro_auc", "ece")
            ]
            + [
                value_with_ci(value=referral.get(k), ci95=ci, key=f"referral_{k}")
                for k in ("sensitivity", "specificity", "auc")
            ]
        )
    optimistic = (
        " The validation set chose the checkpoint, temperature and threshold, so its numbers are optimistic; the "
        "test sets chose nothing."
        if "validation" in evaluations
        else ""
    )
    return (
        "## Metrics\n\nValues with 95% stratified bootstrap intervals in brackets. Multiclass metrics use the "
        "probabilities restricted to each set's label space; referral metrics use the full output and the "
        f"validation threshold.{optimistic}\n\n" + markdown_table(header=header, rows=rows)
    )


def acquisition_mix(meta: Mapping[str, Any]) -> str:
    """E.g. "77% dermoscopic, 23% clinical", from the recorded counts; empty when they were not recorded."""
    counts = training_data(meta).get("acquisition") or {}
    total = sum(counts.values())
    if not total:
        return ""
    return ", ".join(f"{100 * n / total:.0f}% {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def card_limitations(meta: Mapping[str, Any]) -> str:
    images = training_data(meta).get("images") or {}
    n_train = sum(n for key, n in images.items() if key.endswith("/train"))
    size = (meta.get("preprocessing") or {}).get("input_size")
    mix = acquisition_mix(meta)
    architecture = meta.get("architecture") or {}
    start = initialisation(architecture)
    return (
        "## Limitations\n\n"
        f"* **Small model** ({architecture.get('name', 'n/a')}{f', {start.detail}' if start else ''}; "
        f"{n_train or 'an unrecorded number of'} training images) at **low resolution** ({fmt(size)} px): fine "
        "dermoscopic structures are lost, and it is below the accuracy of large models trained at full size.\n"
        f"* **Dermoscopic vs clinical shift**{f' (images: {mix})' if mix else ''}: dermoscopic and clinical "
        "photographs look different, and in public data the acquisition type is confounded with the source and "
        "its case mix, so the model may partly learn the camera rather than the lesion. Compare the "
        "per-acquisition results in each evaluation report; performance on phone photographs is unmeasured "
        "unless an evaluation set above contains them.\n"
        f"* {skin_type_limitation(meta)}\n"
        f"* **Source artefacts**: {artefact_limitation(meta)}\n"
        "* The referral threshold is a validation estimate: its sensitivity on new data varies around the target "
        "(see the intervals), and on lesions unlike any in training it is unknown."
    )


def skin_type_limitation(meta: Mapping[str, Any]) -> str:
    """What the bundle knows of its training images' skin types: the Fitzpatrick counts where a source rated them."""
    data = training_data(meta)
    counts = dict(data.get("skin_types_train") or {})
    unrecorded = counts.pop("unrecorded", 0)
    rated = sum(counts.values())
    under_represented = "dermatology image collections are known to under-represent dark skin"
    if not rated:
        return (
            "**Skin-type coverage is unknown**: the bundle does not record the skin types of its training images, "
            f"and {under_represented}."
        )
    sources = ", ".join(data.get("skin_type_sources_train") or []) or "some sources"
    types = ", ".join(f"{kind} {fmt(n)}" for kind, n in counts.items())
    dark = sum(counts.get(kind, 0) for kind in ("V", "VI"))
    return (
        f"**Skin-type coverage is mostly unknown**: a Fitzpatrick type is recorded for {fmt(rated)} of the "
        f"{fmt(rated + unrecorded)} training images (by {sources}: {types}; types V-VI {fmt(dark)}), none for the "
        f"rest, and {under_represented}. Performance by skin type is not measured."
    )


def artefact_limitation(meta: Mapping[str, Any]) -> str:
    """Which registered artefacts preprocessing removed and which it left in, then the unregistered ones."""
    masked, unmasked = masked_artefacts(meta), unmasked_artefacts(meta)
    clauses = []
    if masked:
        clauses.append(f"removed at training and evaluation for {', '.join(masked)}")
    if unmasked:
        clauses.append(f"left in for {', '.join(unmasked)}, which can be learnt as a shortcut")
    elif masked == []:
        clauses.append("none was removed, and no training source registers one")
    if not clauses:
        return "artefacts (watermarks, caption bars, rulers, ink marks, vignetting, atlas framing) may be learnt as shortcuts."
    return (
        "; ".join(clauses)
        + "; other artefacts (rulers, ink marks, vignetting, atlas framing) may still be learnt as shortcuts."
    )


def card_reproduce(meta: Mapping[str, Any]) -> str:
    config = meta.get("training", {}).get("config")
    text = (
        "## How to reproduce\n\n"
        f"Check out the code at version `{meta.get('code_version', 'n/a')}`, stage the datasets listed above "
        "(`skintriage data list` says how to obtain each), save the configuration below as `config.yaml` and run "
        "`skintriage train config.yaml`. Rerunning the same command resumes an interrupted run; evaluation "
        "reports are written to `runs/<name>/eval/`."
    )
    if config:
        text += "\n\n```yaml\n" + yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False) + "```"
    return text


def card_variants(meta: Mapping[str, Any]) -> str | None:
    """The engines and precisions the bundle is calibrated for, each with its parity against float32."""
    variants = meta.get("variants") or {}
    if not variants:
        return None
    rows = [["torch-float32", "PyTorch float32", "the reference (the calibration above)", "", "", ""]]
    for name, entry in variants.items():
        validation = (entry.get("parity") or {}).get("sets", {}).get("validation", {})
        rows.append(
            [
                name,
                f"{entry['engine']} {entry['precision']}" + (f" (`{entry['file']}`)" if entry.get("file") else ""),
                "yes" if entry.get("admissible") else f"no: {entry.get('verdict', '')}",
                f"{validation['level_agreement']:.2%}" if "level_agreement" in validation else "",
                f"{validation['max_abs_probability']:.1e}" if "max_abs_probability" in validation else "",
                f"{entry['speed']['batch_1_ms']:.1f}" if entry.get("speed") else "",
            ]
        )
    return (
        "## Deployment variants\n\n"
        f"Default (what the demo and `skintriage predict` run): **{meta.get('default_variant') or 'torch-float32'}**, "
        "the fastest admissible variant at batch 1 where it was exported. Each variant's temperature and thresholds "
        "were fitted on its own validation outputs (`skintriage export --variant`); admissible means no validation "
        "metric worse than float32's 95% CI and referral levels agreeing with float32 on at least 99.5% of "
        "validation images.\n\n"
        + markdown_table(
            header=["variant", "engine", "admissible", "validation level agreement", "max abs dp", "batch-1 ms"],
            rows=rows,
        )
    )


def card_title(meta: Mapping[str, Any], *, fallback: str) -> str:
    """A title a person reads: what network, from which weights, trained on which data (the run name after it)."""
    architecture = meta.get("architecture") or {}
    name = str(architecture.get("name") or fallback)
    if name in MODELS:  # the registry's human name: "EfficientNet-Lite0", not "efficientnet_lite0"
        name = MODELS[name].description.split(" (")[0].split(",")[0] or name
    start, sources = initialisation(architecture), ", ".join(source_names(meta))
    if sources:
        about = f"{start.short}{start.then} {sources}" if start else f"trained on {sources}"
    else:
        about = start.short if start else ""
    return f"# About the model: {name}{f' ({about})' if about else ''}; run `{meta.get('name', fallback)}`"


def write_model_card(bundle_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` next to ``model.json`` from the bundle's own metadata; returns its path.

    The card is generated, never hand-written, so it cannot drift from the weights it describes; every
    optional field may be missing (a bundle saved before calibration or evaluation still gets a card).
    """
    bundle_dir = Path(bundle_dir)
    meta = json.loads((bundle_dir / "model.json").read_text(encoding="utf-8"))
    sections = [
        card_title(meta, fallback=bundle_dir.name),
        f"> {DISCLAIMER}",
        card_details(meta),
        card_intended_use(),
        card_unseen_diagnoses(meta),
        card_training_data(meta),
        card_preprocessing(meta),
        card_calibration(meta),
        card_variants(meta),
        card_metrics(meta),
        card_limitations(meta),
        card_reproduce(meta),
    ]
    path = bundle_dir / MODEL_CARD_FILE
    atomic_write_text(path, "\n\n".join(section for section in sections if section) + "\n")
    return path
