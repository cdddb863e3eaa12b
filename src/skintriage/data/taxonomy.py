"""The triage taxonomy: canonical diagnoses, the four triage groups, and every source's label map.

Every dataset speaks its own vocabulary (HAM10000's ``akiec``, PAD-UFES-20's ``ACK``, DermNet topic
names, ...). Each vocabulary is mapped *explicitly*, one YAML file per vocabulary under
``label_maps/``, onto a small set of canonical diagnoses, and each canonical diagnosis belongs to
exactly one triage group. A label that no map knows is an error naming the label and the source: a
silent default would quietly turn an unreviewed diagnosis into "benign".

Decision on ``akiec`` (HAM10000 / ISIC 2018 "actinic keratoses and intraepithelial carcinoma /
Bowen's disease"): it is kept as one canonical diagnosis, because HAM10000 does not say which of the
two each image is, and it is placed in the ``other_malignant`` triage group. Intraepithelial carcinoma
is squamous cell carcinoma in situ, and actinic keratosis is its precursor; both call for treatment,
and the ISIC challenges count ``akiec`` on the malignant side. A triage tool that sent these home as
benign would under-refer. Actinic keratoses from other sources (PAD-UFES-20 ``ACK``, DermNet
"Actinic keratosis") join the same diagnosis so that the classes line up across datasets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

import yaml

from skintriage.common.errors import SkintriageError

TAXONOMY_VERSION = "1.0"


class TriageGroup(StrEnum):
    MCC = "mcc"
    CUTANEOUS_METASTASIS = "cutaneous_metastasis"
    OTHER_MALIGNANT = "other_malignant"
    BENIGN = "benign"


MALIGNANT_GROUPS = frozenset({TriageGroup.MCC, TriageGroup.CUTANEOUS_METASTASIS, TriageGroup.OTHER_MALIGNANT})


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    group: TriageGroup
    covers: str


DIAGNOSES: dict[str, Diagnosis] = {
    d.code: d
    for d in (
        Diagnosis("mcc", "Merkel cell carcinoma", TriageGroup.MCC, "primary cutaneous neuroendocrine carcinoma"),
        Diagnosis(
            "metastasis",
            "Cutaneous metastasis",
            TriageGroup.CUTANEOUS_METASTASIS,
            "skin metastasis of an internal solid cancer, neuroendocrine tumours included",
        ),
        Diagnosis("mel", "Melanoma", TriageGroup.OTHER_MALIGNANT, "invasive melanoma and melanoma in situ"),
        Diagnosis("bcc", "Basal cell carcinoma", TriageGroup.OTHER_MALIGNANT, "all subtypes"),
        Diagnosis("scc", "Squamous cell carcinoma", TriageGroup.OTHER_MALIGNANT, "invasive SCC, keratoacanthoma"),
        Diagnosis(
            "akiec",
            "Actinic keratosis / intraepithelial carcinoma",
            TriageGroup.OTHER_MALIGNANT,
            "actinic keratosis, Bowen's disease (SCC in situ), other intraepithelial squamous neoplasia",
        ),
        Diagnosis(
            "other_malignant",
            "Other malignant lesion",
            TriageGroup.OTHER_MALIGNANT,
            "cutaneous lymphoma, Kaposi sarcoma, adnexal carcinomas, extramammary Paget disease, ...",
        ),
        Diagnosis("nv", "Melanocytic naevus", TriageGroup.BENIGN, "common, congenital, blue, halo, atypical naevi"),
        Diagnosis(
            "bkl",
            "Benign keratosis",
            TriageGroup.BENIGN,
            "seborrhoeic keratosis, solar lentigo, lichen planus-like keratosis",
        ),
        Diagnosis("df", "Dermatofibroma", TriageGroup.BENIGN, "dermatofibroma"),
        Diagnosis(
            "vasc", "Vascular lesion", TriageGroup.BENIGN, "angiomas, angiokeratomas, pyogenic granulomas, haemorrhage"
        ),
        Diagnosis(
            "other_benign", "Other benign lesion", TriageGroup.BENIGN, "cysts, adnexal tumours, other benign growths"
        ),
        Diagnosis(
            "non_neoplastic",
            "Non-neoplastic skin condition",
            TriageGroup.BENIGN,
            "inflammatory, infectious and genetic conditions that are not tumours",
        ),
    )
}


class UnknownLabelError(SkintriageError, ValueError):
    """A raw label that the source's label map does not list."""


@dataclass(frozen=True)
class LabelMap:
    """One vocabulary's explicit mapping of raw labels onto canonical diagnosis codes."""

    name: str
    description: str
    labels: dict[str, str]  # normalised raw label -> diagnosis code

    def diagnosis_for(self, raw_label: object, *, source: str, where: str = "") -> Diagnosis:
        key = normalise_label(raw_label)
        if key not in self.labels:
            place = f" ({where})" if where else ""
            raise UnknownLabelError(
                f"source {source!r}: label {raw_label!r}{place} is not in label map {self.name!r}; "
                f"add it to skintriage/data/label_maps/{self.name}.yaml with its canonical diagnosis "
                f"(one of: {', '.join(DIAGNOSES)})"
            )
        return DIAGNOSES[self.labels[key]]


def normalise_label(raw_label: object) -> str:
    """Labels are matched case-insensitively with surrounding and repeated whitespace ignored."""
    return " ".join(str(raw_label).split()).casefold()


@cache
def label_map(name: str) -> LabelMap:
    """Load ``label_maps/<name>.yaml``; a map that points at an unknown diagnosis fails at load time."""
    path = resources.files("skintriage.data") / "label_maps" / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no label map named {name!r} (looked for {path})")
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    labels: dict[str, str] = {}
    for raw_label, code in document["labels"].items():
        key = normalise_label(raw_label)
        if code not in DIAGNOSES:
            raise ValueError(f"label map {name!r}: label {raw_label!r} maps to unknown diagnosis {code!r}")
        if key in labels and labels[key] != code:
            raise ValueError(f"label map {name!r}: label {raw_label!r} is listed twice with different diagnoses")
        labels[key] = code
    return LabelMap(name=name, description=document.get("description", ""), labels=labels)


def label_map_names() -> list[str]:
    folder = resources.files("skintriage.data") / "label_maps"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def is_malignant(group: TriageGroup | str) -> bool:
    return TriageGroup(group) in MALIGNANT_GROUPS


def malignant_indices(class_codes: Sequence[str]) -> list[int]:
    """Positions in ``class_codes`` (canonical diagnosis codes) of the malignant classes, in order.

    The one list behind every malignancy score: :func:`malignancy_probability` (one image, by code) and
    ``metrics.malignancy_score`` (an array of rows) both sum the probabilities at these positions.
    """
    unknown = [c for c in class_codes if c not in DIAGNOSES]
    if unknown:
        raise ValueError(f"unknown diagnosis codes {unknown}; expected codes from skintriage.data.taxonomy.DIAGNOSES")
    return [i for i, c in enumerate(class_codes) if is_malignant(DIAGNOSES[c].group)]


def malignancy_probability(probabilities: Mapping[str, float]) -> float:
    """Summed probability of the malignant classes (what the referral thresholds apply to), at most 1.

    ``probabilities`` is keyed by diagnosis code; ``metrics.malignancy_score`` is the same sum for an array of rows.
    """
    values = list(probabilities.values())
    return min(1.0, sum(values[i] for i in malignant_indices(list(probabilities))))
