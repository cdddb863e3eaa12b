"""The referral engine: calibrated probabilities + uncertainty + clinical context -> level, reasons, differential.

Pure functions over plain values; no model, no I/O, so every rule can be pinned by a test and shown to
educators without an image (the app's *Referral criteria* tab runs this module alone).

**What it can and cannot know.** The classifier was trained on dermoscopic and clinical photographs of
common skin lesions (melanoma, BCC, SCC, actinic keratosis, naevi, keratoses, ...). It has never seen
a Merkel cell carcinoma or a cutaneous metastasis, so no output of it means "MCC" or "metastasis". The
engine never claims to recognise them. It flags lesions that *could* be one by combining what it has:

1. image evidence: the malignancy probability against the bundle's validated thresholds (referral at
   the 95%-sensitivity threshold, urgent at the 95%-specificity threshold), and whether the most
   likely malignant pattern is a non-pigmented one (the closest the model comes to the red or pink
   nodule MCC usually is);
2. the uncertainty gate: an image unlike the training data, or a prediction too uncertain to act on,
   is referred because the model *cannot assess* it, never silently called benign;
3. clinical context: the AEIOU features of MCC (Heath et al. 2008), a known neuroendocrine tumour or
   other internal cancer (a new skin nodule may be a metastasis), or a previous MCC.

Each rule that fires adds a reason and may raise the level (``routine`` < ``refer`` < ``urgent``). The
context rules are prompts to examine and biopsy, not scores with a measured accuracy: the AEIOU paper
could not estimate specificity. Every threshold lives in :class:`ReferralPolicy`, filled from the
bundle (:meth:`ReferralPolicy.from_metadata`), with project defaults documented field by field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum

from skintriage.taxonomy import DIAGNOSES, TriageGroup, is_malignant
from skintriage.uncertainty import Uncertainty

HEATH_2008 = "Heath et al., J Am Acad Dermatol 2008;58:375-381 (PMID 18280333)"


class Level(IntEnum):
    ROUTINE = 0
    REFER = 1
    URGENT = 2

    @property
    def label(self) -> str:
        return self.name.lower()


LEVEL_MEANING = {
    Level.ROUTINE: "routine review: no rule fired; the lesion still needs the usual clinical examination",
    Level.REFER: "refer to a dermatologist for examination and, where indicated, biopsy",
    Level.URGENT: "urgent referral (suspected cancer pathway): examination and biopsy without delay",
}

# Body sites (HAM10000 / ISIC ``localization`` vocabulary and plain words) that are usually sun-exposed.
UV_EXPOSED_SITES = frozenset(
    {"face", "scalp", "ear", "neck", "head", "head/neck", "lip", "nose", "upper extremity", "arm", "forearm",
     "hand", "back of hand", "dorsal hand", "lower leg", "shin", "shoulder", "upper back"}
)  # fmt: skip
SITES = sorted(
    UV_EXPOSED_SITES
    | {"trunk", "chest", "abdomen", "back", "lower back", "buttock", "genital", "foot", "sole", "palm",
       "thigh", "lower extremity", "acral", "other"}
)  # fmt: skip


@dataclass(frozen=True)
class ClinicalContext:
    """What the clinician knows about the patient and the lesion; ``None``/``False`` means not known or absent."""

    age: int | None = None
    site: str | None = None
    immunosuppressed: bool = False
    rapid_growth: bool = False  # expanding rapidly, within 3 months
    asymptomatic: bool = False  # not tender, not itchy
    known_neuroendocrine_tumour: bool = False
    known_other_primary_cancer: bool = False
    prior_mcc: bool = False

    def __post_init__(self) -> None:
        if self.age is not None and not 0 <= self.age <= 120:
            raise ValueError(f"age must be between 0 and 120 years, not {self.age}")
        if self.site is not None and self.site.strip().lower() not in SITES:
            raise ValueError(f"unknown body site {self.site!r}; use one of: {', '.join(SITES)}")

    @property
    def uv_exposed_site(self) -> bool:
        return self.site is not None and self.site.strip().lower() in UV_EXPOSED_SITES

    def aeiou(self, *, older_than: int) -> list[str]:
        """The AEIOU features present, in order, each as a short phrase."""
        present = [
            (self.asymptomatic, "asymptomatic (not tender)"),
            (self.rapid_growth, "expanding rapidly (within 3 months)"),
            (self.immunosuppressed, "immune suppression"),
            (self.age is not None and self.age > older_than, f"older than {older_than} (age {self.age})"),
            (self.uv_exposed_site, f"UV-exposed site ({self.site})"),
        ]
        return [phrase for flag, phrase in present if flag]

    @property
    def is_empty(self) -> bool:
        return self == ClinicalContext()


# How the threshold reasons name an acquisition type: "the clinical-photo threshold", "used for clinical photos".
ACQUISITION_WORDS = {
    "dermoscopic": ("dermoscopic-image", "dermoscopic images"),
    "clinical": ("clinical-photo", "clinical photos"),
}


@dataclass(frozen=True)
class ThresholdSource:
    """Where one acquisition type's thresholds came from (``calibration.by_acquisition.<type>`` in ``model.json``).

    The reasons quote it, so that a referral says whose threshold it applied and how that threshold did on
    validation. ``fallback`` is set when the type had too few validation images and kept the pooled values
    (the numbers are then the pooled ones, over all validation images).
    """

    acquisition: str
    n_images: int
    referral_sensitivity: float
    referral_specificity: float
    urgent_sensitivity: float
    urgent_specificity: float
    fallback: str | None = None

    @classmethod
    def from_entry(cls, acquisition: str, entry: Mapping) -> ThresholdSource:
        validation, urgent = entry.get("validation") or {}, entry.get("urgent") or {}
        nan = float("nan")
        return cls(
            acquisition=acquisition,
            n_images=int(validation.get("n_images", 0)),
            referral_sensitivity=float(validation.get("referral_sensitivity", nan)),
            referral_specificity=float(validation.get("referral_specificity", nan)),
            urgent_sensitivity=float(urgent.get("validation_sensitivity", nan)),
            urgent_specificity=float(urgent.get("validation_specificity", nan)),
            fallback=entry.get("fallback"),
        )

    @property
    def label(self) -> str:
        """E.g. "the clinical-photo threshold", or "the pooled threshold, used for clinical photos"."""
        name, plural = ACQUISITION_WORDS.get(self.acquisition, (self.acquisition, f"{self.acquisition} images"))
        if self.fallback:
            return (
                f"the pooled threshold, used for {plural} because there were {self.fallback.removeprefix('pooled: ')}"
            )
        return f"the {name} threshold"

    def note(self, target: str, sensitivity: float, specificity: float) -> str:
        """``target`` ("chosen for 95% sensitivity") with the validation set and how the threshold did on it."""
        images = (
            f"{self.n_images} validation images"
            if self.fallback
            else f"{self.n_images} {self.acquisition} validation images"
        )
        return f"{self.label}; {target} on {images}: sensitivity {sensitivity:.3f}, specificity {specificity:.3f}"


@dataclass(frozen=True)
class ReferralPolicy:
    """Every threshold the engine uses, and where it comes from.

    * ``referral_threshold`` / ``urgent_threshold``: from the bundle's calibration on validation data
      (the largest threshold keeping 95% sensitivity; the smallest keeping 95% specificity).
    * ``aeiou_min_features`` (3): a project choice. Heath et al. report how often each feature occurs
      in MCC (A 88%, E 63%, I 7.8%, O 90%, U 81%), not how a count separates MCC from other lesions;
      three of five is where most MCC patients sit while a single common feature (age) does not fire.
    * ``aeiou_age`` (50): the "O" of AEIOU, as published.
    * ``non_pigmented_classes``: the model's malignant classes that present as non-pigmented nodules
      or plaques (SCC, the DermNet "other malignant" group); MCC is red or pink in 56% (Heath et al.).
    * ``non_pigmented_share`` (0.5): that pattern counts when these classes hold at least half of the
      malignancy probability; a project choice.
    * ``mcc_mimic_classes``: benign classes MCC is often mistaken for; 56% of MCC were thought benign at
      biopsy, most often a cyst or acne-like lesion (Heath et al.). A lesion the model calls one of
      these is referred when the context adds rapid growth or ``mcc_mimic_min_features`` (2) AEIOU
      features; a project choice, so that an angioma without context is not referred.
    * ``target_sensitivity``, ``urgent_specificity``, ``ood_quantile``, ``low_confidence_quantile``: the
      validation targets the thresholds were chosen for, quoted in the reasons.
    * ``source``: set when the two malignancy thresholds are one acquisition type's (dermoscopic or
      clinical, fitted on that type's validation images); the threshold reasons then name it and its
      validation numbers. ``None``: the pooled thresholds, worded as they always were.
    """

    referral_threshold: float
    urgent_threshold: float
    aeiou_min_features: int = 3
    aeiou_age: int = 50
    non_pigmented_classes: tuple[str, ...] = ("scc", "other_malignant")
    non_pigmented_share: float = 0.5
    mcc_mimic_classes: tuple[str, ...] = ("vasc", "other_benign")
    mcc_mimic_min_features: int = 2
    target_sensitivity: float = 0.95
    urgent_specificity: float = 0.95
    ood_quantile: float = 0.99
    low_confidence_quantile: float = 0.95
    source: ThresholdSource | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.referral_threshold <= self.urgent_threshold <= 1.0:
            raise ValueError(
                f"need 0 < referral_threshold ({self.referral_threshold}) <= urgent_threshold "
                f"({self.urgent_threshold}) <= 1"
            )
        unknown = [c for c in (*self.non_pigmented_classes, *self.mcc_mimic_classes) if c not in DIAGNOSES]
        if unknown:
            raise ValueError(f"non_pigmented_classes / mcc_mimic_classes {unknown} are not diagnoses of the taxonomy")

    @classmethod
    def from_metadata(cls, metadata: Mapping, *, acquisition: str | None = None) -> ReferralPolicy:
        """The policy for a bundle (``model.json``); refuses one whose thresholds were never calibrated.

        ``acquisition`` ("dermoscopic", "clinical"): that type's thresholds from ``calibration.by_acquisition``
        instead of the pooled ones (an error naming the field if the bundle has none for it).
        """
        calibration = metadata.get("calibration") or {}
        if "referral_threshold" not in calibration or "threshold" not in (calibration.get("urgent") or {}):
            raise ValueError(
                "the model bundle has no calibrated referral and urgent thresholds (calibration.referral_threshold, "
                "calibration.urgent.threshold); run `skintriage fit-gates --checkpoint DIR`"
            )
        source = None
        if acquisition is not None:
            entry = (calibration.get("by_acquisition") or {}).get(acquisition) or {}
            if "referral_threshold" not in entry or "threshold" not in (entry.get("urgent") or {}):
                raise ValueError(
                    f"the model bundle has no calibration.by_acquisition.{acquisition} with referral_threshold and "
                    "urgent.threshold; run `skintriage fit-gates --checkpoint DIR`"
                )
            calibration, source = entry, ThresholdSource.from_entry(acquisition, entry)
        gate = metadata.get("uncertainty") or {}
        return cls(
            referral_threshold=float(calibration["referral_threshold"]),
            urgent_threshold=float(calibration["urgent"]["threshold"]),
            target_sensitivity=float(calibration.get("target_sensitivity", 0.95)),
            urgent_specificity=float(calibration["urgent"].get("target_specificity", 0.95)),
            ood_quantile=float(gate.get("ood_quantile", 0.99)),
            low_confidence_quantile=float(gate.get("low_confidence_quantile", 0.95)),
            source=source,
        )

    def referral_note(self) -> str:
        """What the reasons say about the referral threshold, in brackets after its value."""
        target = f"chosen for {self.target_sensitivity:.0%} sensitivity"
        if self.source is None:
            return f"{target} on validation images"
        return self.source.note(target, self.source.referral_sensitivity, self.source.referral_specificity)

    def urgent_note(self) -> str:
        """What the reasons say about the urgent threshold, in brackets after its value."""
        target = f"{self.urgent_specificity:.0%} specificity"
        if self.source is None:
            return f"{target} on validation images"
        return self.source.note(f"chosen for {target}", self.source.urgent_sensitivity, self.source.urgent_specificity)


@dataclass(frozen=True)
class Reason:
    rule: str  # a stable identifier, e.g. "malignancy_above_referral_threshold"
    text: str
    level: str  # the level this rule alone asks for


@dataclass(frozen=True)
class DifferentialEntry:
    condition: str  # "mcc", "cutaneous_metastasis", "other_malignant", "cannot_assess"
    name: str
    why: str


@dataclass(frozen=True)
class ReferralDecision:
    level: str
    meaning: str
    reasons: list[Reason]
    differential: list[DifferentialEntry]
    limits: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


LIMITS = (
    "Research prototype, not a diagnostic device: the decision support is for research and teaching only.",
    "The model was trained on common skin lesions (dermoscopic HAM10000 and clinical DermNet photographs); it has "
    "never seen Merkel cell carcinoma or a cutaneous metastasis and cannot recognise them.",
    "Clinical-context rules (AEIOU, known primary cancer, previous MCC) are prompts to examine and biopsy, "
    "not scores with a measured accuracy.",
)


def malignancy_probability(probabilities: Mapping[str, float]) -> float:
    """Summed probability of the malignant classes (what the referral thresholds apply to), at most 1."""
    return min(1.0, sum(p for c, p in probabilities.items() if is_malignant(DIAGNOSES[c].group)))


def malignant_share(probabilities: Mapping[str, float], classes: Sequence[str]) -> float:
    """Share of the malignancy probability held by ``classes`` (0 when nothing is malignant)."""
    malignant = {c: p for c, p in probabilities.items() if is_malignant(DIAGNOSES[c].group)}
    total = sum(malignant.values())
    return sum(p for c, p in malignant.items() if c in classes) / total if total > 0 else 0.0


def top_malignant(probabilities: Mapping[str, float], n: int = 2, *, floor: float = 0.01) -> list[tuple[str, float]]:
    """The ``n`` most likely malignant classes with at least ``floor`` probability."""
    malignant = [(c, p) for c, p in probabilities.items() if is_malignant(DIAGNOSES[c].group) and p >= floor]
    return sorted(malignant, key=lambda item: -item[1])[:n]


def decide(
    probabilities: Mapping[str, float],
    uncertainty: Uncertainty | None,
    context: ClinicalContext | None,
    policy: ReferralPolicy,
) -> ReferralDecision:
    """Apply every rule; the level is the highest any rule (or combination) asks for.

    ``probabilities`` are calibrated class probabilities keyed by diagnosis code; the malignancy
    probability is their malignant-class sum. ``uncertainty=None`` means no gate was available, which
    is itself stated as a reason (the image cannot then be called routine on the model's word alone).
    """
    context = context or ClinicalContext()
    malignancy = malignancy_probability(probabilities)
    reasons: list[Reason] = []
    differential: list[DifferentialEntry] = []

    def fire(rule: str, level: Level, text: str) -> None:
        reasons.append(Reason(rule, text, level.label))

    # 1. image evidence
    above_referral = malignancy >= policy.referral_threshold
    above_urgent = malignancy >= policy.urgent_threshold
    if above_urgent:
        fire(
            "malignancy_above_urgent_threshold",
            Level.URGENT,
            f"The image looks malignant: malignancy probability {malignancy:.3f} is at or above the urgent threshold "
            f"{policy.urgent_threshold:.3f} ({policy.urgent_note()}).",
        )
    elif above_referral:
        fire(
            "malignancy_above_referral_threshold",
            Level.REFER,
            f"Malignancy probability {malignancy:.3f} is at or above the referral threshold "
            f"{policy.referral_threshold:.3f} ({policy.referral_note()}).",
        )
    share = malignant_share(probabilities, policy.non_pigmented_classes)
    non_pigmented = above_referral and share >= policy.non_pigmented_share
    if non_pigmented:
        names = ", ".join(DIAGNOSES[c].name for c in policy.non_pigmented_classes)
        fire(
            "non_pigmented_malignant_pattern",
            Level.REFER,
            f"Most of the malignancy probability ({share:.0%}) is on non-pigmented patterns ({names}); MCC and "
            "metastases are usually non-pigmented nodules, so these cannot be told apart by this model.",
        )

    # 2. uncertainty gate
    cannot_assess = uncertainty is None or uncertainty.cannot_assess
    if uncertainty is None:
        fire(
            "no_uncertainty_gate",
            Level.REFER,
            "The model cannot assess this lesion: this model bundle has no uncertainty gate, so an unusual image "
            "cannot be recognised as such.",
        )
    else:
        if uncertainty.out_of_distribution:
            fire(
                "out_of_distribution",
                Level.REFER,
                "The model cannot assess this lesion: the image is unlike its training images (more unusual than "
                f"{policy.ood_quantile:.0%} of validation images). Its probabilities for this image mean little.",
            )
        if uncertainty.low_confidence:
            fire(
                "low_confidence",
                Level.REFER,
                f"The model cannot assess this lesion: its prediction is too uncertain (normalised entropy "
                f"{uncertainty.entropy:.2f} above {uncertainty.entropy_threshold:.2f}, exceeded by "
                f"{1 - policy.low_confidence_quantile:.0%} of validation images).",
            )

    # 3. clinical context
    aeiou = context.aeiou(older_than=policy.aeiou_age)
    aeiou_fires = len(aeiou) >= policy.aeiou_min_features
    if aeiou_fires:
        fire(
            "aeiou_features",
            Level.REFER,
            f"{len(aeiou)} of the 5 AEIOU features of Merkel cell carcinoma are present ({'; '.join(aeiou)}). "
            f"They describe most MCC patients ({HEATH_2008}) but do not exclude other lesions: a prompt to biopsy.",
        )
    if context.known_neuroendocrine_tumour or context.known_other_primary_cancer:
        primary = "neuroendocrine tumour" if context.known_neuroendocrine_tumour else "internal cancer"
        fire(
            "known_primary_cancer",
            Level.REFER,
            f"The patient has a known {primary}: a new skin nodule may be a cutaneous metastasis and needs a biopsy.",
        )
    if context.rapid_growth:
        fire(
            "rapid_growth",
            Level.REFER,
            "The lesion is expanding rapidly (within 3 months): a fast-growing nodule needs examination; rapid growth "
            f"was reported in 63% of MCC ({HEATH_2008}).",
        )
    class_call = max(probabilities, key=probabilities.get)
    mimic = (
        class_call in policy.mcc_mimic_classes
        and not above_referral
        and (context.rapid_growth or len(aeiou) >= policy.mcc_mimic_min_features)
    )
    if mimic:
        fire(
            "mcc_mimic_with_context",
            Level.REFER,
            f"The model reads a benign {DIAGNOSES[class_call].name.lower()}, but with these clinical features "
            f"({'; '.join(aeiou)}) MCC must be considered: 56% of MCC were thought benign at biopsy, most often a "
            f"cyst or acne-like lesion ({HEATH_2008}).",
        )
    if context.prior_mcc:
        fire(
            "prior_mcc",
            Level.URGENT,
            "The patient has had Merkel cell carcinoma: a new lesion may be a recurrence or metastasis.",
        )
    # a bundle without a gate is a property of the model, not evidence about this image
    image_evidence = above_referral or (uncertainty is not None and uncertainty.cannot_assess)
    context_risk = aeiou_fires or context.known_neuroendocrine_tumour or context.known_other_primary_cancer
    if context_risk and image_evidence:
        fire(
            "context_and_image_evidence",
            Level.URGENT,
            "Clinical risk features and image findings (a malignancy probability above the referral threshold, or "
            "an image the model cannot assess) occur together.",
        )

    # differential: what the clinician should consider, and why
    if aeiou_fires or context.prior_mcc or non_pigmented or mimic:
        why = []
        if aeiou_fires:
            why.append(f"{len(aeiou)} AEIOU features")
        if mimic:
            why.append("a benign-looking lesion with MCC risk features")
        if context.prior_mcc:
            why.append("previous MCC")
        if non_pigmented:
            why.append("non-pigmented malignant pattern")
        differential.append(
            DifferentialEntry(
                TriageGroup.MCC.value,
                "Merkel cell carcinoma",
                f"{', '.join(why)}; the model was not trained on MCC and cannot confirm or exclude it.",
            )
        )
    if context.known_neuroendocrine_tumour or context.known_other_primary_cancer or context.prior_mcc:
        differential.append(
            DifferentialEntry(
                TriageGroup.CUTANEOUS_METASTASIS.value,
                "Cutaneous metastasis",
                "a known primary cancer (or previous MCC): skin metastases may appear as firm painless nodules; "
                "histology with immunohistochemistry separates them from a primary skin cancer.",
            )
        )
    if above_referral:
        leading = (
            ", ".join(f"{DIAGNOSES[c].name} {p:.2f}" for c, p in top_malignant(probabilities)) or "none above 0.01"
        )
        differential.append(
            DifferentialEntry(
                TriageGroup.OTHER_MALIGNANT.value,
                "Other skin cancer",
                f"the model's most likely malignant classes: {leading}.",
            )
        )
    if cannot_assess:
        differential.append(
            DifferentialEntry(
                "cannot_assess",
                "Not assessable by the model",
                "the image is unusual for the model or its prediction too uncertain; judge the lesion clinically.",
            )
        )

    level = max((Level[r.level.upper()] for r in reasons), default=Level.ROUTINE)
    if level == Level.ROUTINE:
        which = "" if policy.source is None else f" ({policy.source.label})"
        given = (
            f" Clinical features given: {'; '.join(aeiou)} (fewer than {policy.aeiou_min_features} AEIOU)."
            if aeiou
            else ""
        )
        reasons.append(
            Reason(
                "no_rule_fired",
                f"Malignancy probability {malignancy:.3f} is below the referral threshold "
                f"{policy.referral_threshold:.3f}{which} and the image is within the model's experience.{given} "
                "A new, growing or changing nodule still needs clinical examination.",
                Level.ROUTINE.label,
            )
        )
    return ReferralDecision(level.label, LEVEL_MEANING[level], reasons, differential, list(LIMITS))


def illustrative_decision(
    malignancy_probability: float,
    *,
    non_pigmented: bool = False,
    out_of_distribution: bool = False,
    low_confidence: bool = False,
    context: ClinicalContext | None = None,
    policy: ReferralPolicy,
    entropy_threshold: float = 0.77,
) -> ReferralDecision:
    """The engine's decision for a described (not photographed) lesion, for teaching the referral criteria.

    The malignancy probability is placed on one malignant class (melanoma, or SCC when
    ``non_pigmented``) and the rest on naevus; the gate flags are set as given. Everything else is the
    same :func:`decide` that real images go through.
    """
    if not 0.0 <= malignancy_probability <= 1.0:
        raise ValueError(f"malignancy probability must be in [0, 1], not {malignancy_probability}")
    malignant_class = "scc" if non_pigmented else "mel"
    probabilities = {malignant_class: malignancy_probability, "nv": 1.0 - malignancy_probability}
    entropy = 1.0 if low_confidence else 0.0
    uncertainty = Uncertainty(
        score=float(max(out_of_distribution * 1.0, low_confidence * 1.0)),
        ood_distance=float("nan"),
        ood_threshold=float("nan"),
        entropy=entropy,
        entropy_threshold=entropy_threshold,
        out_of_distribution=out_of_distribution,
        low_confidence=low_confidence,
    )
    return decide(probabilities, uncertainty, context, policy)
