"""The referral engine: calibrated probabilities + uncertainty + clinical context -> level, reasons, differential.

Pure functions over plain values; no model, no I/O, so every rule can be pinned by a test and shown to
educators without an image (the app's *Referral criteria* tab and ``skintriage rules`` run this module alone).

**What it can and cannot know.** The classifier was trained on dermoscopic and clinical photographs of
common skin lesions (melanoma, BCC, SCC, actinic keratosis, naevi, keratoses, ...). It has never seen
a Merkel cell carcinoma or a cutaneous metastasis, so no output of it means "MCC" or "metastasis". The
engine never claims to recognise them. It flags lesions that *could* be one by combining what it has:

1. image evidence: the malignancy probability against the bundle's validated thresholds (referral at
   the 95%-sensitivity threshold, urgent at the 95%-specificity threshold, each fitted per photo type),
   and whether the most likely malignant pattern is a non-pigmented one (the closest the model comes to
   the red or pink nodule MCC usually is);
2. the uncertainty gate: an image unlike the training data, or a prediction too uncertain to act on,
   is referred because the model *cannot assess* it, never silently called benign. "Cannot assess" is
   a reason to refer, not image evidence: it never turns clinical context into an urgent referral;
3. clinical context about a **new or enlarging** lesion: the AEIOU features of MCC (Heath et al. 2008),
   a known neuroendocrine tumour or other internal cancer (a new skin nodule may be a metastasis), or a
   previous MCC. A, O and U fit most lesions of older people, so the AEIOU features count only for a
   lesion that is new or enlarging; rapid growth together with two more features is the classic MCC
   picture and is urgent whatever the image score.

Each rule is a :class:`Rule` in :data:`RULES` (its level and when it fires, in words: the README table
and ``skintriage rules`` are generated from it). Each rule that fires adds a reason and may raise the
level (``routine`` < ``refer`` < ``urgent``). The context rules are prompts to examine and biopsy, not
scores with a measured accuracy: the AEIOU paper could not estimate specificity. Every threshold lives
in :class:`ReferralPolicy`, filled from the bundle (:meth:`ReferralPolicy.from_metadata`), with project
defaults documented field by field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING

from skintriage.common.errors import ArgumentError, BundleError
from skintriage.data.taxonomy import DIAGNOSES, TriageGroup, is_malignant, malignancy_probability

if TYPE_CHECKING:  # the record type only: importing uncertainty at run time would load torch and scikit-learn
    from skintriage.triage.uncertainty import Uncertainty

HEATH_2008 = "Heath et al., J Am Acad Dermatol 2008;58:375-381 (PMID 18280333)"


class Level(StrEnum):
    """A referral level, lowest first, ordered by rank (``Level.ROUTINE < Level.REFER < Level.URGENT``).

    A ``str`` whose value is the level's name ("refer"), so JSON, CSV and f-strings show it as the plain word
    they always did and it compares equal to that word. Ordering is by rank, not alphabetical (as text,
    "refer" < "routine"), and only between levels: ordering a level against a plain string is a ``TypeError``
    rather than a silent text comparison.
    """

    ROUTINE = "routine"
    REFER = "refer"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        """0 for routine, 1 for refer, 2 for urgent: the position in the declaration."""
        return list(Level).index(self)

    @property
    def label(self) -> str:
        """The word shown for the level in the rule table and the JSON ("routine", "refer", "urgent")."""
        return self.value

    def _rank_of(self, other: object) -> int:
        if not isinstance(other, Level):
            raise TypeError(f"a referral level orders only against another Level, not {other!r}")
        return other.rank

    def __lt__(self, other: object) -> bool:
        return self.rank < self._rank_of(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= self._rank_of(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > self._rank_of(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._rank_of(other)


RE_PRESENT = "Re-present, or refer, if it grows, bleeds, ulcerates or becomes firm."
CANNOT_EXCLUDE = "This model cannot exclude Merkel cell carcinoma or a cutaneous metastasis: it has never seen either."

LEVEL_MEANING = {
    Level.ROUTINE: "routine review: no referral rule fired, which is not reassurance; the lesion still needs the "
    "usual clinical examination",
    Level.REFER: "refer to a dermatologist for examination and, where indicated, biopsy",
    Level.URGENT: "urgent referral (suspected cancer pathway): examination and biopsy without delay",
}

# Body sites (HAM10000 / ISIC ``localization`` vocabulary and plain words), each with whether it counts as
# the "U" of AEIOU (a UV-exposed site). The rule is by region, so that synonyms agree: head and neck, the
# upper limb with the shoulder, the back (upper or unspecified) and the leg below the knee are commonly
# sun-exposed; the front of the trunk, lower back, buttock, genitals, thigh, foot and palm are usually
# covered. "lower extremity" is HAM10000's word for the leg, so it counts like "leg".
SITE_UV_EXPOSED: Mapping[str, bool] = {
    **dict.fromkeys(("face", "scalp", "ear", "neck", "head", "head/neck", "lip", "nose"), True),
    **dict.fromkeys(("upper extremity", "arm", "forearm", "hand", "back of hand", "dorsal hand", "shoulder"), True),
    **dict.fromkeys(("back", "upper back"), True),
    **dict.fromkeys(("leg", "lower leg", "shin", "lower extremity"), True),
    **dict.fromkeys(
        ("trunk", "chest", "abdomen", "lower back", "buttock", "genital", "thigh", "foot", "sole", "palm", "acral"),
        False,
    ),
    "other": False,
}
UV_EXPOSED_SITES = frozenset(site for site, exposed in SITE_UV_EXPOSED.items() if exposed)
SITES = sorted(SITE_UV_EXPOSED)


@dataclass(frozen=True)
class ClinicalContext:
    """What the clinician knows about the patient and the lesion; ``None``/``False`` means not known or absent.

    ``fair_skin``: ``True`` fair skin, ``False`` not fair, ``None`` not given (a UV-exposed site then still
    counts, and the reason says the skin type was not given).
    """

    age: int | None = None
    site: str | None = None
    fair_skin: bool | None = None
    new_or_enlarging_nodule: bool = False  # a new lesion, or one that has grown
    immunosuppressed: bool = False
    rapid_growth: bool = False  # expanding rapidly, within 3 months
    asymptomatic: bool = False  # not tender, not itchy
    known_neuroendocrine_tumour: bool = False
    known_other_primary_cancer: bool = False
    prior_mcc: bool = False

    def __post_init__(self) -> None:
        if self.age is not None and not 0 <= self.age <= 120:
            raise ArgumentError(f"age must be between 0 and 120 years, not {self.age}")
        if self.site is not None and self.site.strip().lower() not in SITE_UV_EXPOSED:
            raise ArgumentError(f"unknown body site {self.site!r}; use one of: {', '.join(SITES)}")

    @property
    def uv_exposed_site(self) -> bool:
        """The "U" of AEIOU: a UV-exposed site, on skin not given as other than fair."""
        return self.site is not None and SITE_UV_EXPOSED[self.site.strip().lower()] and self.fair_skin is not False

    @property
    def new_or_growing(self) -> bool:
        """The lesion is new or enlarging (rapid growth implies it): what makes the context rules apply."""
        return self.new_or_enlarging_nodule or self.rapid_growth

    @property
    def known_cancer(self) -> bool:
        return self.known_neuroendocrine_tumour or self.known_other_primary_cancer

    def aeiou(self, *, older_than: int) -> list[str]:
        """The AEIOU features present, in order, each as a short phrase."""
        skin = {True: "on fair skin", None: "skin type not given"}.get(self.fair_skin, "")
        present = [
            (self.asymptomatic, "asymptomatic (not tender)"),
            (self.rapid_growth, "expanding rapidly (within 3 months)"),
            (self.immunosuppressed, "immune suppression"),
            (self.age is not None and self.age > older_than, f"older than {older_than} (age {self.age})"),
            (self.uv_exposed_site, f"UV-exposed site ({self.site}; {skin})"),
        ]
        return [phrase for flag, phrase in present if flag]

    @property
    def is_empty(self) -> bool:
        return self == ClinicalContext()


@dataclass(frozen=True)
class Rule:
    """One rule of the engine: its stable id, the level it asks for, and when it fires, in words.

    ``fires_when`` may name :class:`ReferralPolicy` fields in braces (``{aeiou_min_features}``); they are
    filled from a policy when the table is rendered, so the table states the values the engine uses.
    """

    id: str
    level: Level
    group: str  # "image", "uncertainty", "context", "outcome"
    fires_when: str


RULES: tuple[Rule, ...] = (
    Rule(
        "malignancy_above_urgent_threshold",
        Level.URGENT,
        "image",
        "malignancy probability ≥ the bundle's urgent threshold for the photo type (chosen for "
        "{urgent_specificity:.0%} specificity on that type's validation images)",
    ),
    Rule(
        "malignancy_above_referral_threshold",
        Level.REFER,
        "image",
        "malignancy probability ≥ the bundle's referral threshold for the photo type (chosen for "
        "{target_sensitivity:.0%} sensitivity on that type's validation images), below the urgent one",
    ),
    Rule(
        "non_pigmented_malignant_pattern",
        Level.REFER,
        "image",
        "referred by the image, and the non-pigmented malignant classes ({non_pigmented_classes}) hold ≥ "
        "{non_pigmented_share:.0%} of the malignancy probability",
    ),
    Rule(
        "no_uncertainty_gate",
        Level.REFER,
        "uncertainty",
        "the bundle has no uncertainty gate, so an unusual image cannot be recognised (cannot assess)",
    ),
    Rule(
        "out_of_distribution",
        Level.REFER,
        "uncertainty",
        "the image's embedding is farther from every class than {ood_quantile:.0%} of validation images "
        "(Mahalanobis; cannot assess)",
    ),
    Rule(
        "low_confidence",
        Level.REFER,
        "uncertainty",
        "normalised entropy above the validation {low_confidence_quantile:.0%} quantile (cannot assess)",
    ),
    Rule(
        "aeiou_features",
        Level.REFER,
        "context",
        "a new or enlarging nodule (or rapid growth) with ≥ {aeiou_min_features} of the 5 AEIOU features: "
        "asymptomatic, expanding rapidly, immune suppression, older than {aeiou_age}, UV-exposed site on skin "
        "not given as other than fair (Heath et al. 2008)",
    ),
    Rule(
        "rapid_growth",
        Level.REFER,
        "context",
        "the lesion has been expanding rapidly (within 3 months)",
    ),
    Rule(
        "clinically_suspected_mcc",
        Level.URGENT,
        "context",
        "the classic MCC picture, whatever the image score: rapid growth with ≥ 2 other AEIOU features, or the "
        "MCC-mimic rule below with rapid growth",
    ),
    Rule(
        "mcc_mimic_with_context",
        Level.REFER,
        "context",
        "the model's most likely class is a benign MCC mimic ({mcc_mimic_classes}), the image is below the "
        "referral threshold, and the lesion is growing rapidly, or new or enlarging with ≥ "
        "{mcc_mimic_min_features} AEIOU features",
    ),
    Rule(
        "known_primary_cancer",
        Level.REFER,
        "context",
        "a known neuroendocrine tumour or other internal cancer, and the lesion is a new or enlarging nodule",
    ),
    Rule(
        "known_cancer_lesion_not_new",
        Level.ROUTINE,
        "context",
        "a known internal cancer, but the lesion is not marked new or enlarging: stated, does not refer by itself",
    ),
    Rule(
        "prior_mcc",
        Level.URGENT,
        "context",
        "previous Merkel cell carcinoma (a new lesion may be a recurrence or metastasis)",
    ),
    Rule(
        "context_and_image_evidence",
        Level.URGENT,
        "outcome",
        "a context rule (AEIOU, known cancer with a new nodule) together with a malignancy probability ≥ the "
        'referral threshold ("cannot assess" does not count as image evidence)',
    ),
    Rule(
        "no_rule_fired",
        Level.ROUTINE,
        "outcome",
        "nothing above fired: routine review, stating that the model cannot exclude MCC or metastasis and when "
        "to re-present",
    ),
)
RULE = {rule.id: rule for rule in RULES}


# How the threshold reasons name an acquisition type: "the clinical-photo threshold", "clinical photos".
ACQUISITION_WORDS = {
    "dermoscopic": ("dermoscopic-image", "dermoscopic images"),
    "clinical": ("clinical-photo", "clinical photos"),
}


@dataclass(frozen=True)
class ThresholdSource:
    """What one set of thresholds was validated on (``calibration`` or ``calibration.by_acquisition.<type>``).

    The reasons quote it, so that a referral says whose threshold it applied and how that threshold did on
    which validation images. ``acquisition=None``: the pooled thresholds, fitted on every validation image.
    ``fallback`` is set when the type had too few validation images and kept the pooled values (the numbers
    are then the pooled ones, over all validation images).
    """

    acquisition: str | None
    n_images: int
    n_malignant: int | None  # None: a bundle written before the count was recorded
    referral_sensitivity: float
    referral_specificity: float
    urgent_sensitivity: float
    urgent_specificity: float
    fallback: str | None = None

    @classmethod
    def from_entry(cls, acquisition: str | None, entry: Mapping) -> ThresholdSource:
        validation, urgent = entry.get("validation") or {}, entry.get("urgent") or {}
        nan = float("nan")
        return cls(
            acquisition=acquisition,
            n_images=int(validation.get("n_images", 0)),
            n_malignant=int(validation["n_malignant"]) if "n_malignant" in validation else None,
            referral_sensitivity=float(validation.get("referral_sensitivity", nan)),
            referral_specificity=float(validation.get("referral_specificity", nan)),
            urgent_sensitivity=float(urgent.get("validation_sensitivity", nan)),
            urgent_specificity=float(urgent.get("validation_specificity", nan)),
            fallback=entry.get("fallback"),
        )

    @property
    def label(self) -> str:
        """E.g. "the clinical-photo threshold", or "the pooled threshold, used for clinical photos"."""
        if self.acquisition is None:
            return "the pooled threshold (dermoscopic and clinical images together)"
        name, plural = ACQUISITION_WORDS.get(self.acquisition, (self.acquisition, f"{self.acquisition} images"))
        if self.fallback:
            return (
                f"the pooled threshold, used for {plural} because there were {self.fallback.removeprefix('pooled: ')}"
            )
        return f"the {name} threshold"

    def note(self, target: str, sensitivity: float, specificity: float) -> str:
        """``target`` ("chosen for 95% sensitivity"), the validation images, and how the threshold did on them."""
        kind = "" if self.fallback or self.acquisition is None else f"{self.acquisition} "
        malignant = "" if self.n_malignant is None else f"{self.n_malignant} malignant, "
        return (
            f"{self.label}; {target} on {self.n_images} {kind}validation images of common skin lesions "
            f"({malignant}none of them an MCC or a metastasis), where it reached sensitivity "
            f"{sensitivity:.3f} and specificity {specificity:.3f}"
        )


@dataclass(frozen=True)
class ReferralPolicy:
    """Every threshold the engine uses, and where it comes from.

    * ``referral_threshold`` / ``urgent_threshold``: from the bundle's calibration on validation data
      (the largest threshold keeping 95% sensitivity; the smallest keeping 95% specificity).
    * ``aeiou_min_features`` (3): a project choice. Heath et al. report how often each feature occurs
      in MCC (A 88%, E 63%, I 7.8%, O 90%, U 81%; 89% of patients had three or more), not how a count
      separates MCC from other lesions. The features count only for a new or enlarging lesion.
    * ``aeiou_age`` (50): the "O" of AEIOU, as published.
    * ``non_pigmented_classes``: the model's malignant classes that present as non-pigmented nodules
      or plaques (SCC, the "other malignant" group); MCC is red or pink in 56% (Heath et al.).
    * ``non_pigmented_share`` (0.5): that pattern counts when these classes hold at least half of the
      malignancy probability; a project choice.
    * ``mcc_mimic_classes``: benign classes MCC is often mistaken for; 56% of MCC were thought benign at
      biopsy, most often a cyst or acne-like lesion, 32% (Heath et al.): vascular lesions and the "other
      benign" group (cysts among them) on those clinical grounds, and dermatofibroma (a firm benign
      nodule) by measurement: on clinical validation photos, 2 of the 10 malignant images below the
      referral threshold were called dermatofibroma against 6.1% of benign ones
      (``experiments/referral_engine``). "Non-neoplastic" (acne-like) was measured and left out: 6 of
      those 10 had that call, but so had 64.6% of benign images, so the call adds nothing to the context
      alone. A lesion the model calls a mimic is referred when it grows rapidly, or is new or enlarging
      with ``mcc_mimic_min_features`` (2) AEIOU features; a project choice, so that an angioma without
      context is not referred.
    * ``target_sensitivity``, ``urgent_specificity``, ``ood_quantile``, ``low_confidence_quantile``: the
      validation targets the thresholds were chosen for, quoted in the reasons.
    * ``source``: what the thresholds were validated on (photo type, images, sensitivity and specificity
      there), quoted by the threshold reasons; ``None`` for a hand-made policy.
    * ``training_sources``: the datasets the model was trained on, named in the limits of every card.
    """

    referral_threshold: float
    urgent_threshold: float
    aeiou_min_features: int = 3
    aeiou_age: int = 50
    non_pigmented_classes: tuple[str, ...] = ("scc", "other_malignant")
    non_pigmented_share: float = 0.5
    mcc_mimic_classes: tuple[str, ...] = ("vasc", "other_benign", "df")
    mcc_mimic_min_features: int = 2
    target_sensitivity: float = 0.95
    urgent_specificity: float = 0.95
    ood_quantile: float = 0.99
    low_confidence_quantile: float = 0.95
    source: ThresholdSource | None = None
    training_sources: tuple[str, ...] = ()

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
            raise BundleError(
                "the model bundle has no calibrated referral and urgent thresholds (calibration.referral_threshold, "
                "calibration.urgent.threshold); run `skintriage fit-gates --checkpoint DIR`"
            )
        if acquisition is not None:
            entry = (calibration.get("by_acquisition") or {}).get(acquisition) or {}
            if "referral_threshold" not in entry or "threshold" not in (entry.get("urgent") or {}):
                raise BundleError(
                    f"the model bundle has no calibration.by_acquisition.{acquisition} with referral_threshold and "
                    "urgent.threshold; run `skintriage fit-gates --checkpoint DIR`"
                )
            calibration = entry
        gate = metadata.get("uncertainty") or {}
        sources = ((metadata.get("training") or {}).get("data") or {}).get("sources") or []
        return cls(
            referral_threshold=float(calibration["referral_threshold"]),
            urgent_threshold=float(calibration["urgent"]["threshold"]),
            target_sensitivity=float(calibration.get("target_sensitivity", 0.95)),
            urgent_specificity=float(calibration["urgent"].get("target_specificity", 0.95)),
            ood_quantile=float(gate.get("ood_quantile", 0.99)),
            low_confidence_quantile=float(gate.get("low_confidence_quantile", 0.95)),
            source=ThresholdSource.from_entry(acquisition, calibration),
            training_sources=tuple(dict.fromkeys(str(s.get("source")) for s in sources if s.get("source"))),
        )

    def referral_note(self) -> str:
        """What the reasons say about the referral threshold, in brackets after its value."""
        target = f"chosen for {self.target_sensitivity:.0%} sensitivity"
        if self.source is None:
            return f"{target} on validation images"
        return self.source.note(target, self.source.referral_sensitivity, self.source.referral_specificity)

    def urgent_note(self) -> str:
        """What the reasons say about the urgent threshold, in brackets after its value."""
        target = f"chosen for {self.urgent_specificity:.0%} specificity"
        if self.source is None:
            return f"{target} on validation images"
        return self.source.note(target, self.source.urgent_sensitivity, self.source.urgent_specificity)

    def limits(self) -> list[str]:
        """What every card says about this model's limits."""
        trained_on = (
            f" ({', '.join(self.training_sources)}; the model card describes each)" if self.training_sources else ""
        )
        return [
            "Research prototype, not a diagnostic device: the decision support is for research and teaching only.",
            f"The model was trained on dermoscopic and clinical photographs of common skin lesions{trained_on}; "
            "it has never seen Merkel cell carcinoma or a cutaneous metastasis and cannot recognise or exclude them.",
            "Clinical-context rules (AEIOU, known primary cancer, previous MCC) are prompts to examine and biopsy, "
            "not scores with a measured accuracy: the AEIOU features describe MCC, they do not pick it out.",
        ]


def policy_defaults() -> dict[str, object]:
    """The project defaults of :class:`ReferralPolicy` (the fields that have one), by name."""
    return {f.name: f.default for f in fields(ReferralPolicy) if f.default is not MISSING}


def rule_conditions(policy: ReferralPolicy | None = None) -> list[tuple[Rule, str]]:
    """Each rule with its ``fires_when`` filled from ``policy`` (default: the project defaults)."""
    values = policy_defaults() if policy is None else {f.name: getattr(policy, f.name) for f in fields(policy)}
    shown = {
        name: ", ".join(DIAGNOSES[c].name for c in value) if name.endswith("_classes") else value
        for name, value in values.items()
    }
    return [(rule, rule.fires_when.format(**shown)) for rule in RULES]


def rules_markdown(policy: ReferralPolicy | None = None) -> str:
    """The rule table of the README and ``skintriage rules``, generated from :data:`RULES`."""
    lines = ["| rule | fires when | level |", "|---|---|---|"]
    lines += [f"| `{rule.id}` | {text} | {rule.level.label} |" for rule, text in rule_conditions(policy)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Reason:
    rule: str  # a stable identifier, e.g. "malignancy_above_referral_threshold" (an id of RULES)
    text: str
    level: Level  # the level this rule alone asks for


# The work-up pathways a differential entry points to (the keys of skintriage.triage.guidance.DIFFERENTIAL_TOPICS).
WORKUPS = (
    "suspected_mcc",
    "mcc_recurrence",
    "metastasis",
    "neuroendocrine_metastasis",
    "other_malignant",
    "cannot_assess",
)


@dataclass(frozen=True)
class DifferentialEntry:
    condition: str  # "mcc", "cutaneous_metastasis", "other_malignant", "cannot_assess"
    name: str
    why: str
    workup: str  # which work-up guidance fits (one of WORKUPS)


@dataclass(frozen=True)
class ReferralDecision:
    level: Level
    meaning: str
    reasons: list[Reason]
    differential: list[DifferentialEntry]
    limits: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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

    def fire(rule: str, text: str) -> None:
        reasons.append(Reason(rule, text, RULE[rule].level))

    # 1. image evidence
    above_referral = malignancy >= policy.referral_threshold
    if malignancy >= policy.urgent_threshold:
        fire(
            "malignancy_above_urgent_threshold",
            f"The image looks malignant: malignancy probability {malignancy:.3f} is at or above the urgent threshold "
            f"{policy.urgent_threshold:.3f} ({policy.urgent_note()}).",
        )
    elif above_referral:
        fire(
            "malignancy_above_referral_threshold",
            f"Malignancy probability {malignancy:.3f} is at or above the referral threshold "
            f"{policy.referral_threshold:.3f} ({policy.referral_note()}).",
        )
    share = malignant_share(probabilities, policy.non_pigmented_classes)
    non_pigmented = above_referral and share >= policy.non_pigmented_share
    if non_pigmented:
        names = ", ".join(DIAGNOSES[c].name for c in policy.non_pigmented_classes)
        fire(
            "non_pigmented_malignant_pattern",
            f"Most of the malignancy probability ({share:.0%}) is on non-pigmented patterns ({names}); MCC and "
            "metastases are usually non-pigmented nodules, so these cannot be told apart by this model.",
        )

    # 2. uncertainty gate: a reason to refer ("cannot assess"), never image evidence
    cannot_assess = uncertainty is None or uncertainty.cannot_assess
    if uncertainty is None:
        fire(
            "no_uncertainty_gate",
            "The model cannot assess this lesion: this model bundle has no uncertainty gate, so an unusual image "
            "cannot be recognised as such.",
        )
    else:
        if uncertainty.out_of_distribution:
            fire(
                "out_of_distribution",
                "The model cannot assess this lesion: the image is unlike its training images (more unusual than "
                f"{policy.ood_quantile:.0%} of validation images). Its probabilities for this image mean little.",
            )
        if uncertainty.low_confidence:
            fire(
                "low_confidence",
                f"The model cannot assess this lesion: its prediction is too uncertain (normalised entropy "
                f"{uncertainty.entropy:.2f} above {uncertainty.entropy_threshold:.2f}, exceeded by "
                f"{1 - policy.low_confidence_quantile:.0%} of validation images).",
            )

    # 3. clinical context: the AEIOU features and a known cancer count for a new or enlarging lesion
    aeiou = context.aeiou(older_than=policy.aeiou_age)
    aeiou_fires = context.new_or_growing and len(aeiou) >= policy.aeiou_min_features
    cited: list[str] = []

    def heath() -> str:
        """The AEIOU paper in full the first time a card cites it, short after that (one card, one reference)."""
        cited.append(HEATH_2008)
        return HEATH_2008 if len(cited) == 1 else "Heath et al. 2008"

    if aeiou_fires:
        fire(
            "aeiou_features",
            f"A new or enlarging lesion with {len(aeiou)} of the 5 AEIOU features of Merkel cell carcinoma "
            f"({'; '.join(aeiou)}). 89% of MCC patients had three or more ({heath()}), but the features also fit "
            "many benign lesions of older people: a prompt to examine and biopsy, not a diagnosis.",
        )
    if context.rapid_growth:
        fire(
            "rapid_growth",
            "The lesion is expanding rapidly (within 3 months): a fast-growing nodule needs examination; rapid growth "
            f"was reported in 63% of MCC ({heath()}).",
        )
    class_call = max(probabilities, key=probabilities.get)
    mimic = (
        class_call in policy.mcc_mimic_classes
        and not above_referral
        and (context.rapid_growth or (context.new_or_enlarging_nodule and len(aeiou) >= policy.mcc_mimic_min_features))
    )
    classic = context.rapid_growth and len(aeiou) - 1 >= 2  # rapid growth and two more features
    if classic or (mimic and context.rapid_growth):
        picture = (  # classic implies the AEIOU rule fired (rapid growth is E and makes the lesion growing)
            "rapid growth with the AEIOU features above"
            if classic
            else f"rapid growth of a lesion the model reads as a benign {DIAGNOSES[class_call].name.lower()}"
        )
        fire(
            "clinically_suspected_mcc",
            f"Clinically suspected Merkel cell carcinoma ({picture}): urgent whatever the image score, because MCC "
            f"is often thought benign (56% at biopsy, {heath()}) and grows fast.",
        )
    if mimic:
        fire(
            "mcc_mimic_with_context",
            f"The model reads a benign {DIAGNOSES[class_call].name.lower()}, but with these clinical features "
            f"({'those above' if aeiou_fires else '; '.join(aeiou) or 'a new or enlarging lesion'}) MCC must be "
            f"considered: 56% of MCC were thought benign at biopsy, most often a cyst or acne-like lesion ({heath()}).",
        )
    primary = {
        (True, False): "neuroendocrine tumour",
        (False, True): "internal cancer",
        (True, True): "neuroendocrine tumour and another internal cancer",
    }.get((context.known_neuroendocrine_tumour, context.known_other_primary_cancer), "")
    known_cancer_fires = context.known_cancer and context.new_or_growing
    if known_cancer_fires:
        fire(
            "known_primary_cancer",
            f"The patient has a known {primary}: a new or enlarging skin nodule may be a cutaneous metastasis and "
            "needs a biopsy.",
        )
    elif context.known_cancer:
        fire(
            "known_cancer_lesion_not_new",
            f"The patient has a known {primary}, but this lesion is not marked new or enlarging: that alone does "
            "not refer it. A new or enlarging skin nodule in this patient should be referred for biopsy.",
        )
    if context.prior_mcc:
        fire(
            "prior_mcc",
            "The patient has had Merkel cell carcinoma: a new lesion may be a recurrence or metastasis "
            "(about 40% recur, mostly within 2-3 years).",
        )
    if (aeiou_fires or known_cancer_fires) and above_referral:
        fire(
            "context_and_image_evidence",
            "Clinical risk features and a malignancy probability above the referral threshold occur together.",
        )

    # differential: what the clinician should consider, why, and which work-up fits
    suspected_mcc = aeiou_fires or classic or mimic or non_pigmented
    if suspected_mcc:
        why = []
        if aeiou_fires or classic:
            why.append(f"{len(aeiou)} AEIOU features in a new or growing lesion")
        if mimic:
            why.append("a benign-looking lesion with MCC risk features")
        if non_pigmented:
            why.append("non-pigmented malignant pattern")
        differential.append(
            DifferentialEntry(
                TriageGroup.MCC.value,
                "Merkel cell carcinoma",
                f"{', '.join(why)}; the model was not trained on MCC and cannot confirm or exclude it.",
                "suspected_mcc",
            )
        )
    if context.prior_mcc:
        differential.append(
            DifferentialEntry(
                TriageGroup.MCC.value,
                "Recurrence or metastasis of Merkel cell carcinoma",
                "previous MCC: a new skin lesion needs a biopsy and a recurrence work-up.",
                "mcc_recurrence",
            )
        )
    if known_cancer_fires:
        differential.append(
            DifferentialEntry(
                TriageGroup.CUTANEOUS_METASTASIS.value,
                "Cutaneous metastasis",
                f"a known {primary} and a new or enlarging nodule: skin metastases are usually firm, painless "
                "nodules; histology with immunohistochemistry chosen for the primary separates them from a skin "
                "cancer.",
                "neuroendocrine_metastasis" if context.known_neuroendocrine_tumour else "metastasis",
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
                "other_malignant",
            )
        )
    if cannot_assess:
        differential.append(
            DifferentialEntry(
                "cannot_assess",
                "Not assessable by the model",
                "the image is unusual for the model or its prediction too uncertain; judge the lesion clinically.",
                "cannot_assess",
            )
        )

    level = max((r.level for r in reasons), default=Level.ROUTINE)
    if level == Level.ROUTINE:
        which = "" if policy.source is None else f" ({policy.source.label})"
        given = (
            f" Clinical features given: {'; '.join(aeiou)}"
            + (
                f" (fewer than {policy.aeiou_min_features} AEIOU features)."
                if context.new_or_growing
                else " (AEIOU counts only for a new or enlarging lesion)."
            )
            if aeiou
            else ""
        )
        fire(
            "no_rule_fired",
            f"No referral rule fired: malignancy probability {malignancy:.3f} is below the referral threshold "
            f"{policy.referral_threshold:.3f}{which}.{given} {CANNOT_EXCLUDE} {RE_PRESENT}",
        )
    return ReferralDecision(level, LEVEL_MEANING[level], reasons, differential, policy.limits())


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
        raise ArgumentError(f"malignancy probability must be in [0, 1], not {malignancy_probability}")
    malignant_class = "scc" if non_pigmented else "mel"
    probabilities = {malignant_class: malignancy_probability, "nv": 1.0 - malignancy_probability}
    entropy = 1.0 if low_confidence else 0.0
    from skintriage.triage.uncertainty import Uncertainty  # here, so that importing the rules stays light

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
