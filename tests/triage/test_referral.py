"""The referral engine: every rule id fires when it should, stays silent when it should not, at its exact level.

All inputs are hand-built: probabilities over the bundled model's class codes, an :class:`Uncertainty` with
the flags set by hand, and ``ReferralPolicy(referral_threshold=0.16, urgent_threshold=0.64)`` (close to the
bundle's calibrated 0.159 / 0.641, but round, so the texts can be checked for the numbers).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.taxonomy import malignancy_probability
from skintriage.model.bundle import METADATA_FILE
from skintriage.triage import referral
from skintriage.triage.referral import (
    HEATH_2008,
    LEVEL_MEANING,
    RULE,
    RULES,
    SITE_UV_EXPOSED,
    SITES,
    UV_EXPOSED_SITES,
    WORKUPS,
    ClinicalContext,
    Level,
    ReferralDecision,
    ReferralPolicy,
    decide,
    malignant_share,
    rules_markdown,
    top_malignant,
)
from skintriage.triage.uncertainty import Uncertainty
from tests.helpers import REPO

CLASSES = (
    "mel",
    "bcc",
    "scc",
    "akiec",
    "other_malignant",
    "nv",
    "bkl",
    "df",
    "vasc",
    "other_benign",
    "non_neoplastic",
)
MALIGNANT = ("mel", "bcc", "scc", "akiec", "other_malignant")
POLICY = ReferralPolicy(referral_threshold=0.16, urgent_threshold=0.64)

# Every rule id the engine can emit; test_every_rule_id_in_the_engine_is_pinned_here fails when one is added.
PINNED_RULES = {
    "malignancy_above_urgent_threshold",
    "malignancy_above_referral_threshold",
    "non_pigmented_malignant_pattern",
    "no_uncertainty_gate",
    "out_of_distribution",
    "low_confidence",
    "aeiou_features",
    "known_primary_cancer",
    "prior_mcc",
    "context_and_image_evidence",
    "rapid_growth",
    "mcc_mimic_with_context",
    "clinically_suspected_mcc",
    "known_cancer_lesion_not_new",
    "no_rule_fired",
}
NEVER_SEEN = "never seen Merkel cell carcinoma or a cutaneous metastasis"


def probs(**given: float) -> dict[str, float]:
    """All classes, in bundle order, with the given values and the rest of the mass on ``nv`` (a naevus)."""
    out = dict.fromkeys(CLASSES, 0.0)
    out.update(given)
    if "nv" not in given:
        out["nv"] = 1.0 - sum(given.values())
    return out


def gate(*, ood: bool = False, low: bool = False) -> Uncertainty:
    """A gate result with thresholds 50 (distance) and 0.75 (entropy): 60 / 0.90 trip them, 20 / 0.30 do not."""
    distance, entropy = (60.0 if ood else 20.0), (0.90 if low else 0.30)
    return Uncertainty(
        score=max(distance / 50.0, entropy / 0.75),
        ood_distance=distance,
        ood_threshold=50.0,
        entropy=entropy,
        entropy_threshold=0.75,
        out_of_distribution=ood,
        low_confidence=low,
    )


PASSES = gate()
BENIGN = probs(nv=0.9, bkl=0.1)  # malignancy 0
# O, A, I: exactly three features, in a new or enlarging lesion (the AEIOU rule counts only for one)
AEIOU_3 = {"age": 70, "asymptomatic": True, "immunosuppressed": True, "new_or_enlarging_nodule": True}


def run(
    probabilities: dict[str, float] = BENIGN,
    uncertainty: Uncertainty | None = PASSES,
    policy: ReferralPolicy = POLICY,
    **context,
) -> ReferralDecision:
    return decide(probabilities, uncertainty, ClinicalContext(**context), policy)


def rules(decision: ReferralDecision) -> list[str]:
    return [reason.rule for reason in decision.reasons]


def reason(decision: ReferralDecision, rule: str) -> referral.Reason:
    (found,) = [r for r in decision.reasons if r.rule == rule]
    return found


def conditions(decision: ReferralDecision) -> list[str]:
    return [entry.condition for entry in decision.differential]


def workups(decision: ReferralDecision) -> list[str]:
    return [entry.workup for entry in decision.differential]


def test_every_rule_id_in_the_engine_is_pinned_here_and_registered_once() -> None:
    source = inspect.getsource(referral.decide)
    emitted = set(re.findall(r'fire\(\s*"([a-z_]+)"', source))
    assert emitted == PINNED_RULES == set(RULE)
    assert len(RULES) == len(RULE)  # no id registered twice


def test_the_readme_rule_table_is_the_one_generated_from_the_engine() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- rules:start (generated: skintriage rules) -->\n", "<!-- rules:end -->"
    assert start in readme and end in readme, "README lost the generated rule-table markers"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == rules_markdown(), "README rule table is stale: paste the output of `skintriage rules` there"
    for rule in RULES:
        assert f"`{rule.id}`" in table


# --- 1. image evidence: the malignancy thresholds -------------------------------------------------------


def test_benign_image_with_a_passing_gate_and_no_context_is_routine_with_only_no_rule_fired() -> None:
    decision = run()
    assert decision.level == "routine"
    assert decision.meaning == LEVEL_MEANING[Level.ROUTINE]
    assert rules(decision) == ["no_rule_fired"]
    assert reason(decision, "no_rule_fired").level == "routine"
    text = reason(decision, "no_rule_fired").text
    assert "0.00" in text and "0.16" in text
    # a routine card never reassures: it says what the model cannot exclude and when to come back
    assert "cannot exclude Merkel cell carcinoma or a cutaneous metastasis" in text
    assert "grows, bleeds" in text and "firm" in text
    assert "within the model's experience" not in text
    assert "not reassurance" in decision.meaning
    assert decision.differential == []


def test_malignancy_just_below_the_referral_threshold_is_routine() -> None:
    decision = run(probs(mel=0.159))
    assert decision.level == "routine"
    assert rules(decision) == ["no_rule_fired"]
    assert "is below the referral threshold 0.160" in decision.reasons[0].text


def test_malignancy_exactly_at_the_referral_threshold_refers() -> None:
    decision = run(probs(mel=0.16))
    assert decision.level == "refer"
    assert decision.meaning == LEVEL_MEANING[Level.REFER]
    assert rules(decision) == ["malignancy_above_referral_threshold"]
    r = reason(decision, "malignancy_above_referral_threshold")
    assert r.level == "refer"
    assert "0.160 is at or above the referral threshold 0.160" in r.text and "95% sensitivity" in r.text
    assert conditions(decision) == ["other_malignant"]
    assert decision.differential[0].name == "Other skin cancer"
    assert decision.differential[0].why.startswith("the model's most likely malignant classes: Melanoma 0.16")


def test_malignancy_is_the_sum_of_the_malignant_classes() -> None:
    # no single class reaches 0.16, but mel + bcc + akiec = 0.18 does
    decision = run(probs(mel=0.08, bcc=0.06, akiec=0.04))
    assert rules(decision) == ["malignancy_above_referral_threshold"]
    assert "Malignancy probability 0.18" in decision.reasons[0].text
    assert "Melanoma 0.08, Basal cell carcinoma 0.06" in decision.differential[0].why  # the top two only
    assert "Actinic" not in decision.differential[0].why


def test_malignancy_just_below_the_urgent_threshold_refers_only() -> None:
    decision = run(probs(mel=0.639))
    assert decision.level == "refer"
    assert "malignancy_above_urgent_threshold" not in rules(decision)
    assert rules(decision) == ["malignancy_above_referral_threshold"]


def test_malignancy_exactly_at_the_urgent_threshold_is_urgent_and_replaces_the_referral_reason() -> None:
    decision = run(probs(mel=0.64))
    assert decision.level == "urgent"
    assert decision.meaning == LEVEL_MEANING[Level.URGENT]
    assert rules(decision) == ["malignancy_above_urgent_threshold"]  # not also the referral one
    r = reason(decision, "malignancy_above_urgent_threshold")
    assert r.level == "urgent"
    assert "0.640 is at or above the urgent threshold 0.640" in r.text and "95% specificity" in r.text
    assert conditions(decision) == ["other_malignant"]


def test_top_malignant_and_malignant_share_by_hand() -> None:
    p = probs(mel=0.1, bcc=0.3, scc=0.2, akiec=0.0, other_malignant=0.2)
    assert top_malignant(p) == [("bcc", 0.3), ("scc", 0.2)]  # ties keep class order: scc before other_malignant
    assert malignant_share(p, ("scc", "other_malignant")) == pytest.approx(0.4 / 0.8)
    assert malignant_share(BENIGN, ("scc",)) == 0.0  # nothing malignant: 0, not a division by zero


# --- non-pigmented pattern -------------------------------------------------------------------------------


def test_non_pigmented_share_exactly_one_half_fires_the_pattern_rule() -> None:
    decision = run(probs(scc=0.25, mel=0.25))  # malignancy 0.5, share 0.25 / 0.5 = 0.5
    assert decision.level == "refer"
    assert rules(decision) == ["malignancy_above_referral_threshold", "non_pigmented_malignant_pattern"]
    r = reason(decision, "non_pigmented_malignant_pattern")
    assert r.level == "refer"
    assert "(50%)" in r.text and "Squamous cell carcinoma, Other malignant lesion" in r.text
    assert conditions(decision) == ["mcc", "other_malignant"]
    assert decision.differential[0].name == "Merkel cell carcinoma"
    assert decision.differential[0].why.startswith("non-pigmented malignant pattern;")
    assert "cannot confirm or exclude it" in decision.differential[0].why


def test_non_pigmented_share_just_below_one_half_does_not_fire() -> None:
    decision = run(probs(scc=0.12, other_malignant=0.12, mel=0.26))  # share 0.24 / 0.5 = 0.48
    assert rules(decision) == ["malignancy_above_referral_threshold"]
    assert conditions(decision) == ["other_malignant"]


def test_non_pigmented_pattern_needs_malignancy_above_the_referral_threshold() -> None:
    decision = run(probs(scc=0.15))  # all of the malignancy is SCC, but only 0.15 of it
    assert decision.level == "routine"
    assert rules(decision) == ["no_rule_fired"]
    assert decision.differential == []


def test_non_pigmented_pattern_on_top_of_an_urgent_malignancy() -> None:
    decision = run(probs(other_malignant=0.7))
    assert decision.level == "urgent"
    assert rules(decision) == ["malignancy_above_urgent_threshold", "non_pigmented_malignant_pattern"]
    assert "(100%)" in reason(decision, "non_pigmented_malignant_pattern").text
    assert "Other malignant lesion 0.70" in decision.differential[-1].why


# --- 2. the uncertainty gate -------------------------------------------------------------------------------


def test_no_uncertainty_gate_refers_an_otherwise_benign_image_as_cannot_assess() -> None:
    decision = run(BENIGN, None)
    assert decision.level == "refer"
    assert rules(decision) == ["no_uncertainty_gate"]
    r = reason(decision, "no_uncertainty_gate")
    assert r.level == "refer" and r.text.startswith("The model cannot assess this lesion")
    assert conditions(decision) == ["cannot_assess"]
    assert decision.differential[0].name == "Not assessable by the model"


def test_a_gate_that_passes_gives_no_gate_rule() -> None:
    decision = run(BENIGN, PASSES)
    assert not {"no_uncertainty_gate", "out_of_distribution", "low_confidence"} & set(rules(decision))
    assert "cannot_assess" not in conditions(decision)


def test_out_of_distribution_is_cannot_assess_and_never_routine() -> None:
    decision = run(BENIGN, gate(ood=True))
    assert decision.level == "refer"
    assert rules(decision) == ["out_of_distribution"]
    r = reason(decision, "out_of_distribution")
    assert r.level == "refer"
    assert "cannot assess" in r.text and "99% of validation images" in r.text
    assert conditions(decision) == ["cannot_assess"]


def test_low_confidence_is_cannot_assess_and_states_the_entropy_and_its_threshold() -> None:
    decision = run(BENIGN, gate(low=True))
    assert decision.level == "refer"
    assert rules(decision) == ["low_confidence"]
    r = reason(decision, "low_confidence")
    assert r.level == "refer"
    assert "cannot assess" in r.text and "normalised entropy 0.90 above 0.75" in r.text
    assert conditions(decision) == ["cannot_assess"]


def test_both_gate_checks_give_two_reasons_and_one_cannot_assess_entry() -> None:
    decision = run(BENIGN, gate(ood=True, low=True))
    assert rules(decision) == ["out_of_distribution", "low_confidence"]
    assert conditions(decision) == ["cannot_assess"]
    assert decision.level == "refer"


def test_cannot_assess_does_not_raise_an_urgent_malignancy_further_and_orders_the_differential() -> None:
    decision = run(probs(mel=0.7), gate(ood=True))
    assert decision.level == "urgent"
    assert rules(decision) == ["malignancy_above_urgent_threshold", "out_of_distribution"]
    assert conditions(decision) == ["other_malignant", "cannot_assess"]


# --- 3. clinical context: AEIOU ------------------------------------------------------------------------------


def test_three_aeiou_features_refer_a_benign_image_and_name_mcc_in_the_differential() -> None:
    decision = run(**AEIOU_3)
    assert decision.level == "refer"
    assert rules(decision) == ["aeiou_features"]
    r = reason(decision, "aeiou_features")
    assert r.level == "refer"
    assert r.text.startswith("A new or enlarging lesion with 3 of the 5 AEIOU features")
    assert "asymptomatic (not tender); immune suppression; older than 50 (age 70)" in r.text
    assert HEATH_2008 in r.text and "89%" in r.text and "not a diagnosis" in r.text
    assert conditions(decision) == ["mcc"] and workups(decision) == ["suspected_mcc"]
    assert decision.differential[0].why.startswith("3 AEIOU features in a new or growing lesion;")


def test_two_aeiou_features_do_not_fire_and_are_listed_in_the_routine_reason() -> None:
    decision = run(age=70, asymptomatic=True, new_or_enlarging_nodule=True)
    assert decision.level == "routine"
    assert rules(decision) == ["no_rule_fired"]
    text = decision.reasons[0].text
    assert (
        "Clinical features given: asymptomatic (not tender); older than 50 (age 70) (fewer than 3 AEIOU features)."
        in text
    )
    assert decision.differential == []


def test_all_five_aeiou_features_in_the_published_order() -> None:
    context = ClinicalContext(age=80, site="scalp", immunosuppressed=True, rapid_growth=True, asymptomatic=True)
    assert context.aeiou(older_than=50) == [
        "asymptomatic (not tender)",
        "expanding rapidly (within 3 months)",
        "immune suppression",
        "older than 50 (age 80)",
        "UV-exposed site (scalp; skin type not given)",
    ]
    text = reason(decide(BENIGN, PASSES, context, POLICY), "aeiou_features").text
    assert text.startswith("A new or enlarging lesion with 5 of the 5")


def test_age_exactly_50_is_not_older_than_50_but_51_is() -> None:
    two = {"asymptomatic": True, "immunosuppressed": True, "new_or_enlarging_nodule": True}
    at_50 = run(age=50, **two)
    assert at_50.level == "routine" and rules(at_50) == ["no_rule_fired"]
    at_51 = run(age=51, **two)
    assert at_51.level == "refer" and rules(at_51) == ["aeiou_features"]
    assert "older than 50 (age 51)" in reason(at_51, "aeiou_features").text


def test_the_aeiou_age_and_minimum_count_come_from_the_policy() -> None:
    policy = ReferralPolicy(0.16, 0.64, aeiou_min_features=2, aeiou_age=65)
    new = {"asymptomatic": True, "new_or_enlarging_nodule": True}
    assert rules(run(policy=policy, age=65, **new)) == ["no_rule_fired"]  # 65 is not older than 65
    decision = run(policy=policy, age=66, **new)
    assert rules(decision) == ["aeiou_features"]
    assert "older than 65 (age 66)" in decision.reasons[0].text


@pytest.mark.parametrize("site", ["face", "FACE", " Face ", "Lower Leg", "head/neck", "Back", "leg"])
def test_uv_exposed_site_is_matched_case_insensitively(site: str) -> None:
    context = ClinicalContext(site=site)
    assert context.uv_exposed_site
    assert context.aeiou(older_than=50) == [f"UV-exposed site ({site}; skin type not given)"]
    decision = run(site=site, asymptomatic=True, immunosuppressed=True, new_or_enlarging_nodule=True)
    assert rules(decision) == ["aeiou_features"]


@pytest.mark.parametrize("site", ["trunk", "lower back", "sole", "thigh", "other"])
def test_a_covered_site_is_valid_but_not_uv_exposed(site: str) -> None:
    assert not ClinicalContext(site=site).uv_exposed_site
    assert rules(run(site=site, asymptomatic=True, immunosuppressed=True, new_or_enlarging_nodule=True)) == [
        "no_rule_fired"
    ]


@pytest.mark.parametrize("synonyms", [("back", "upper back"), ("leg", "lower leg", "lower extremity", "shin"),
                                      ("arm", "forearm", "upper extremity"), ("head", "face", "head/neck")])  # fmt: skip
def test_synonymous_sites_agree_on_uv_exposure(synonyms: tuple[str, ...]) -> None:
    assert len({SITE_UV_EXPOSED[site] for site in synonyms}) == 1


def test_fair_skin_counts_where_it_is_given() -> None:
    base = {"site": "face", "asymptomatic": True, "age": 70, "new_or_enlarging_nodule": True}
    assert ClinicalContext(**base, fair_skin=True).aeiou(older_than=50)[-1] == "UV-exposed site (face; on fair skin)"
    assert rules(run(**base, fair_skin=True)) == ["aeiou_features"]
    assert rules(run(**base)) == ["aeiou_features"]  # not given: the site still counts, and the reason says so
    not_fair = run(**base, fair_skin=False)  # U needs fair skin: A and O only
    assert not ClinicalContext(site="face", fair_skin=False).uv_exposed_site
    assert rules(not_fair) == ["no_rule_fired"]


def test_every_uv_exposed_site_is_a_valid_site() -> None:
    assert set(SITES) >= UV_EXPOSED_SITES
    assert sorted(SITES) == SITES


def test_unknown_site_raises_naming_it_and_the_valid_sites() -> None:
    with pytest.raises(ValueError) as error:
        ClinicalContext(site="elbow pit")
    message = str(error.value)
    assert "'elbow pit'" in message
    for site in ("face", "scalp", "trunk", "lower leg", "acral"):
        assert site in message


@pytest.mark.parametrize("age", [-1, 121, 200])
def test_age_out_of_range_raises(age: int) -> None:
    with pytest.raises(ValueError, match=f"age must be between 0 and 120 years, not {age}"):
        ClinicalContext(age=age)


@pytest.mark.parametrize("age", [0, 120])
def test_ages_0_and_120_are_accepted(age: int) -> None:
    assert ClinicalContext(age=age).age == age


def test_an_empty_context_is_empty_and_none_means_an_empty_context() -> None:
    assert ClinicalContext().is_empty and not ClinicalContext(age=40).is_empty
    assert decide(BENIGN, PASSES, None, POLICY) == decide(BENIGN, PASSES, ClinicalContext(), POLICY)


# --- clinical context: known primary cancer and previous MCC -------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "words", "workup"),
    [
        ("known_neuroendocrine_tumour", "neuroendocrine tumour", "neuroendocrine_metastasis"),
        ("known_other_primary_cancer", "internal cancer", "metastasis"),
    ],
)
def test_a_known_primary_cancer_refers_a_new_nodule_with_the_work_up_of_that_primary(flag, words, workup) -> None:
    decision = run(**{flag: True}, new_or_enlarging_nodule=True)
    assert decision.level == "refer"
    assert rules(decision) == ["known_primary_cancer"]
    r = reason(decision, "known_primary_cancer")
    assert r.level == "refer" and f"The patient has a known {words}" in r.text and "cutaneous metastasis" in r.text
    assert conditions(decision) == ["cutaneous_metastasis"] and workups(decision) == [workup]
    assert decision.differential[0].name == "Cutaneous metastasis"
    assert "immunohistochemistry chosen for the primary" in decision.differential[0].why


@pytest.mark.parametrize("flag", ["known_neuroendocrine_tumour", "known_other_primary_cancer"])
def test_a_known_cancer_does_not_refer_a_lesion_that_is_not_new_or_enlarging(flag: str) -> None:
    decision = run(**{flag: True})
    assert decision.level == "routine"
    assert rules(decision) == ["known_cancer_lesion_not_new", "no_rule_fired"]
    note = reason(decision, "known_cancer_lesion_not_new")
    assert note.level == "routine" and "not marked new or enlarging" in note.text
    assert decision.differential == []
    assert rules(run(**{flag: True}, rapid_growth=True))[:2] == ["rapid_growth", "known_primary_cancer"]


def test_both_primaries_give_one_reason_and_the_neuroendocrine_work_up() -> None:
    decision = run(known_neuroendocrine_tumour=True, known_other_primary_cancer=True, new_or_enlarging_nodule=True)
    assert rules(decision) == ["known_primary_cancer"]
    assert "neuroendocrine tumour and another internal cancer" in decision.reasons[0].text
    assert workups(decision) == ["neuroendocrine_metastasis"]


def test_previous_mcc_alone_is_urgent_with_the_recurrence_work_up() -> None:
    decision = run(prior_mcc=True)
    assert decision.level == "urgent"
    assert rules(decision) == ["prior_mcc"]  # not the combination rule: previous MCC is not "context risk" there
    r = reason(decision, "prior_mcc")
    assert r.level == "urgent" and "recurrence or metastasis" in r.text and "40%" in r.text
    assert conditions(decision) == ["mcc"] and workups(decision) == ["mcc_recurrence"]
    assert decision.differential[0].name == "Recurrence or metastasis of Merkel cell carcinoma"


def test_previous_mcc_with_image_evidence_does_not_fire_the_combination_rule() -> None:
    decision = run(probs(mel=0.2), prior_mcc=True)
    assert decision.level == "urgent"
    assert rules(decision) == ["malignancy_above_referral_threshold", "prior_mcc"]


# --- the classic MCC picture, and the older patient's everyday lesion ------------------------------------


def test_the_classic_mcc_picture_is_urgent_whatever_the_image_score() -> None:
    # a 75-year-old with a rapidly growing, painless nodule on the face that the model reads as a vascular lesion
    decision = run(probs(vasc=0.85, nv=0.15), age=75, site="face", rapid_growth=True, asymptomatic=True)
    assert decision.level == "urgent"
    assert "clinically_suspected_mcc" in rules(decision)
    r = reason(decision, "clinically_suspected_mcc")
    assert r.level == "urgent" and "whatever the image score" in r.text
    assert "rapid growth with the AEIOU features above" in r.text
    features = "asymptomatic (not tender); expanding rapidly (within 3 months); older than 50 (age 75); UV-exposed site"
    assert features in reason(decision, "aeiou_features").text
    # the features and the full reference appear once on the card, not in every reason that uses them
    texts = [x.text for x in decision.reasons] + [d.why for d in decision.differential]
    assert sum(text.count(features) for text in texts) == 1
    assert sum(text.count(HEATH_2008) for text in texts) == 1
    assert workups(decision) == ["suspected_mcc"]


def test_rapid_growth_with_two_more_features_is_urgent_even_on_a_naevus_call() -> None:
    decision = run(BENIGN, age=80, rapid_growth=True, asymptomatic=True)
    assert decision.level == "urgent"
    assert rules(decision) == ["aeiou_features", "rapid_growth", "clinically_suspected_mcc"]


def test_rapid_growth_with_one_more_feature_is_not_the_classic_picture() -> None:
    decision = run(BENIGN, age=80, rapid_growth=True)
    assert decision.level == "refer" and rules(decision) == ["rapid_growth"]


def test_a_static_keratosis_in_an_older_patient_is_referred_on_the_image_alone_not_urgent() -> None:
    # malignancy 0.20 on a seborrhoeic keratosis, age 72, face, asymptomatic, not new or enlarging
    decision = run(probs(bkl=0.8, bcc=0.2), age=72, site="face", asymptomatic=True)
    assert decision.level == "refer"
    assert rules(decision) == ["malignancy_above_referral_threshold"]


def test_an_older_patients_benign_lesion_that_is_not_new_is_routine_and_says_why_aeiou_did_not_count() -> None:
    decision = run(BENIGN, age=72, site="face", asymptomatic=True)
    assert decision.level == "routine" and rules(decision) == ["no_rule_fired"]
    assert "AEIOU counts only for a new or enlarging lesion" in decision.reasons[0].text
    # the same lesion, new or enlarging: three features refer it
    assert rules(run(BENIGN, age=72, site="face", asymptomatic=True, new_or_enlarging_nodule=True)) == [
        "aeiou_features"
    ]


# --- the context + image combination -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "context_rule"),
    [
        (AEIOU_3, "aeiou_features"),
        ({"known_neuroendocrine_tumour": True, "new_or_enlarging_nodule": True}, "known_primary_cancer"),
        ({"known_other_primary_cancer": True, "new_or_enlarging_nodule": True}, "known_primary_cancer"),
    ],
    ids=["aeiou", "net", "other_primary"],
)
def test_context_risk_with_a_malignant_looking_image_is_urgent(context, context_rule):
    decision = run(probs(mel=0.16), PASSES, **context)
    assert decision.level == "urgent"
    assert rules(decision) == ["malignancy_above_referral_threshold", context_rule, "context_and_image_evidence"]
    r = reason(decision, "context_and_image_evidence")
    assert r.level == "urgent" and "occur together" in r.text


@pytest.mark.parametrize("uncertainty", [gate(ood=True), gate(low=True), None], ids=["ood", "low", "no_gate"])
def test_cannot_assess_refers_but_does_not_turn_context_into_urgent(uncertainty) -> None:
    decision = run(BENIGN, uncertainty, known_neuroendocrine_tumour=True, **AEIOU_3)
    assert decision.level == "refer"
    assert "context_and_image_evidence" not in rules(decision)
    assert workups(decision) == ["suspected_mcc", "neuroendocrine_metastasis", "cannot_assess"]


def test_context_risk_without_image_evidence_is_not_urgent() -> None:
    decision = run(probs(mel=0.159), PASSES, known_neuroendocrine_tumour=True, **AEIOU_3)
    assert decision.level == "refer"
    assert "context_and_image_evidence" not in rules(decision)
    assert rules(decision) == ["aeiou_features", "known_primary_cancer"]
    assert conditions(decision) == ["mcc", "cutaneous_metastasis"]


def test_two_aeiou_features_with_image_evidence_stay_at_refer() -> None:
    decision = run(probs(mel=0.3), PASSES, age=70, asymptomatic=True, new_or_enlarging_nodule=True)
    assert decision.level == "refer"
    assert rules(decision) == ["malignancy_above_referral_threshold"]


def test_everything_at_once_orders_reasons_and_differential() -> None:
    decision = run(
        probs(scc=0.7),
        gate(ood=True, low=True),
        prior_mcc=True,
        known_other_primary_cancer=True,
        **AEIOU_3,
    )
    assert decision.level == "urgent"
    assert rules(decision) == [
        "malignancy_above_urgent_threshold",
        "non_pigmented_malignant_pattern",
        "out_of_distribution",
        "low_confidence",
        "aeiou_features",
        "known_primary_cancer",
        "prior_mcc",
        "context_and_image_evidence",
    ]
    assert workups(decision) == ["suspected_mcc", "mcc_recurrence", "metastasis", "other_malignant", "cannot_assess"]
    assert decision.differential[0].why.startswith(
        "3 AEIOU features in a new or growing lesion, non-pigmented malignant pattern;"
    )


# --- limits, serialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decision",
    [run(), run(probs(mel=0.9)), run(BENIGN, None), run(prior_mcc=True)],
    ids=["routine", "urgent", "no_gate", "prior_mcc"],
)
def test_limits_always_say_the_model_never_saw_mcc_or_metastasis(decision: ReferralDecision) -> None:
    assert any(NEVER_SEEN in limit for limit in decision.limits)
    assert any("not a diagnostic device" in limit for limit in decision.limits)


def test_levels_order_by_rank_and_read_as_their_plain_word() -> None:
    assert sorted([Level.URGENT, Level.ROUTINE, Level.REFER]) == [Level.ROUTINE, Level.REFER, Level.URGENT]
    assert [level.rank for level in Level] == [0, 1, 2] and max(Level) is Level.URGENT
    assert Level.REFER < Level.URGENT and Level.ROUTINE <= Level.ROUTINE and not Level.ROUTINE > Level.REFER
    # the plain word everywhere a level is written out: equality, JSON, f-strings, the rule table
    assert Level.ROUTINE == "routine" and Level("refer") is Level.REFER and Level.URGENT.label == "urgent"
    assert json.dumps({"level": Level.REFER}) == '{"level": "refer"}' and f"{Level.URGENT}" == "urgent"
    # as text "refer" < "routine"; a level never silently orders against a plain string
    with pytest.raises(TypeError, match="another Level"):
        _ = Level.ROUTINE < "urgent"
    with pytest.raises(TypeError, match="another Level"):
        _ = "urgent" > Level.ROUTINE  # noqa: SIM300 (the reflected comparison is the point)


def test_to_dict_is_json_ready_and_keeps_the_rule_ids() -> None:
    decision = run(probs(mel=0.3), gate(low=True), **AEIOU_3)
    data = decision.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["level"] == "urgent"
    assert [r["rule"] for r in data["reasons"]] == rules(decision)
    assert {r["level"] for r in data["reasons"]} <= set(Level)
    assert [d["condition"] for d in data["differential"]] == ["mcc", "other_malignant", "cannot_assess"]
    assert [d["workup"] for d in data["differential"]] == ["suspected_mcc", "other_malignant", "cannot_assess"]


# --- the policy ---------------------------------------------------------------------------------------------


def test_policy_from_the_bundled_model_json_has_its_calibrated_thresholds() -> None:
    path = DEFAULT_BUNDLE / METADATA_FILE
    if not path.is_file():
        pytest.skip(f"no bundled model at {DEFAULT_BUNDLE}")
    metadata = json.loads(path.read_text(encoding="utf-8"))
    policy = ReferralPolicy.from_metadata(metadata)
    assert policy.referral_threshold == metadata["calibration"]["referral_threshold"]
    assert policy.urgent_threshold == metadata["calibration"]["urgent"]["threshold"]
    assert 0 < policy.referral_threshold < policy.urgent_threshold < 1
    assert (policy.aeiou_min_features, policy.aeiou_age, policy.non_pigmented_share) == (3, 50, 0.5)
    assert policy.non_pigmented_classes == ("scc", "other_malignant")
    assert "ham10000" in policy.training_sources and len(set(policy.training_sources)) == len(policy.training_sources)
    assert any("ham10000" in limit for limit in policy.limits())
    # the pooled thresholds also say what they were validated on
    refer = reason(run(probs(mel=0.99), policy=policy), "malignancy_above_urgent_threshold")
    n = metadata["calibration"]["validation"]["n_images"]
    assert f"the pooled threshold (dermoscopic and clinical images together); chosen for 95% specificity on {n}" in (
        refer.text
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"calibration": None},
        {"calibration": {"temperature": 1.2}},
        {"calibration": {"referral_threshold": 0.2}},  # no urgent threshold: never fitted with fit-gates
        {"calibration": {"referral_threshold": 0.2, "urgent": {}}},
        {"calibration": {"urgent": {"threshold": 0.7}}},
    ],
)
def test_policy_from_metadata_without_thresholds_points_to_fit_gates(metadata: dict) -> None:
    with pytest.raises(ValueError, match="skintriage fit-gates"):
        ReferralPolicy.from_metadata(metadata)


def test_policy_for_one_acquisition_type_quotes_its_validation_numbers() -> None:
    clinical = {
        "referral_threshold": 0.3,
        "validation": {
            "n_images": 188,
            "n_malignant": 70,
            "referral_sensitivity": 0.957,
            "referral_specificity": 0.412,
        },
        "urgent": {"threshold": 0.7, "validation_sensitivity": 0.31, "validation_specificity": 0.952},
    }
    metadata = {"calibration": {"referral_threshold": 0.16, "urgent": {"threshold": 0.64}, "by_acquisition": {
        "clinical": clinical}}}  # fmt: skip
    policy = ReferralPolicy.from_metadata(metadata, acquisition="clinical")
    assert (policy.referral_threshold, policy.urgent_threshold, policy.source.n_images) == (0.3, 0.7, 188)
    refer = reason(run(probs(mel=0.4), policy=policy), "malignancy_above_referral_threshold")
    assert refer.text == (
        "Malignancy probability 0.400 is at or above the referral threshold 0.300 (the clinical-photo threshold; "
        "chosen for 95% sensitivity on 188 clinical validation images of common skin lesions (70 malignant, none of "
        "them an MCC or a metastasis), where it reached sensitivity 0.957 and specificity 0.412)."
    )
    urgent = reason(run(probs(mel=0.8), policy=policy), "malignancy_above_urgent_threshold")
    assert urgent.text.endswith(
        "urgent threshold 0.700 (the clinical-photo threshold; chosen for 95% specificity on 188 clinical "
        "validation images of common skin lesions (70 malignant, none of them an MCC or a metastasis), where it "
        "reached sensitivity 0.310 and specificity 0.952)."
    )
    assert ReferralPolicy.from_metadata(metadata).source.acquisition is None  # the pooled thresholds
    with pytest.raises(ValueError, match=r"no calibration\.by_acquisition\.dermoscopic"):
        ReferralPolicy.from_metadata(metadata, acquisition="dermoscopic")


@pytest.mark.parametrize(("referral_threshold", "urgent_threshold"), [(0.7, 0.6), (0.0, 0.5), (-0.1, 0.5), (0.2, 1.01)])
def test_policy_refuses_thresholds_out_of_order_or_range(referral_threshold: float, urgent_threshold: float) -> None:
    with pytest.raises(ValueError, match="need 0 < referral_threshold"):
        ReferralPolicy(referral_threshold=referral_threshold, urgent_threshold=urgent_threshold)


def test_policy_accepts_equal_thresholds_and_refuses_unknown_non_pigmented_classes() -> None:
    assert ReferralPolicy(0.5, 0.5).urgent_threshold == 0.5
    with pytest.raises(ValueError, match="amelanotic"):
        ReferralPolicy(0.16, 0.64, non_pigmented_classes=("scc", "amelanotic"))


# --- properties over random inputs -----------------------------------------------------------------------


@st.composite
def probability_dicts(draw) -> dict[str, float]:
    weights = draw(st.lists(st.integers(0, 100), min_size=len(CLASSES), max_size=len(CLASSES)))
    if sum(weights) == 0:
        weights[CLASSES.index("nv")] = 1
    return {c: w / sum(weights) for c, w in zip(CLASSES, weights, strict=True)}


uncertainties = st.one_of(st.none(), st.builds(gate, ood=st.booleans(), low=st.booleans()))
contexts = st.builds(
    ClinicalContext,
    age=st.one_of(st.none(), st.integers(0, 120)),
    site=st.one_of(st.none(), st.sampled_from(SITES)),
    fair_skin=st.sampled_from([None, True, False]),
    new_or_enlarging_nodule=st.booleans(),
    immunosuppressed=st.booleans(),
    rapid_growth=st.booleans(),
    asymptomatic=st.booleans(),
    known_neuroendocrine_tumour=st.booleans(),
    known_other_primary_cancer=st.booleans(),
    prior_mcc=st.booleans(),
)


def riskier(context: ClinicalContext) -> list[ClinicalContext]:
    """``context`` with one more clinical risk feature, for every feature it lacks."""
    flags = (
        "new_or_enlarging_nodule",
        "immunosuppressed",
        "rapid_growth",
        "asymptomatic",
        "known_neuroendocrine_tumour",
        "known_other_primary_cancer",
        "prior_mcc",
    )
    out = [dataclasses.replace(context, **{flag: True}) for flag in flags if not getattr(context, flag)]
    if context.age is None or context.age <= 50:
        out.append(dataclasses.replace(context, age=75))
    if not context.uv_exposed_site:
        out.append(dataclasses.replace(context, site="face", fair_skin=True))
    return out


@settings(max_examples=300, deadline=None)
@given(probability_dicts(), uncertainties, contexts)
def test_adding_any_clinical_risk_feature_never_lowers_the_level_or_drops_a_reason(p, uncertainty, context) -> None:
    before = decide(p, uncertainty, context, POLICY)
    for more in riskier(context):
        after = decide(p, uncertainty, more, POLICY)
        assert after.level >= before.level, (context, more)
        assert set(rules(before)) - {"no_rule_fired", "known_cancer_lesion_not_new"} <= set(rules(after))
        assert set(workups(before)) - {"metastasis"} <= set(workups(after))  # metastasis may become the NET one


@settings(max_examples=300, deadline=None)
@given(probability_dicts(), uncertainties, contexts)
def test_invariants_of_every_decision(p, uncertainty, context) -> None:
    decision = decide(p, uncertainty, context, POLICY)
    fired = rules(decision)
    assert len(fired) == len(set(fired)) and set(fired) <= PINNED_RULES
    # the level is the highest any reason asks for; no_rule_fired appears exactly when that is routine
    assert decision.level == max(r.level for r in decision.reasons)
    assert all(r.level is RULE[r.rule].level for r in decision.reasons)
    assert ("no_rule_fired" in fired) == (decision.level == "routine")
    if "no_rule_fired" in fired:
        assert set(fired) <= {"known_cancer_lesion_not_new", "no_rule_fired"} and decision.differential == []
    # an image the model cannot assess is never routine
    if uncertainty is None or uncertainty.cannot_assess:
        assert decision.level != "routine" and "cannot_assess" in conditions(decision)
    if context.prior_mcc:
        assert decision.level == "urgent"
    # context about a lesion that is neither new nor growing never changes the level (previous MCC aside)
    if not (context.new_or_enlarging_nodule or context.rapid_growth or context.prior_mcc):
        assert decision.level == decide(p, uncertainty, None, POLICY).level
    # "cannot assess" is never the image evidence of the urgent combination
    if "context_and_image_evidence" in fired:
        assert malignancy_probability(p) >= POLICY.referral_threshold
    # the differential keeps the work-up order and names each work-up once
    assert workups(decision) == sorted(set(workups(decision)), key=WORKUPS.index)
    assert any(NEVER_SEEN in limit for limit in decision.limits)


@settings(max_examples=200, deadline=None)
@given(probability_dicts(), contexts, st.booleans(), st.booleans())
def test_a_tripped_gate_never_lowers_the_level(p, context, ood, low) -> None:
    passing = decide(p, PASSES, context, POLICY)
    tripped = decide(p, gate(ood=ood, low=low), context, POLICY)
    missing = decide(p, None, context, POLICY)
    assert tripped.level >= passing.level
    assert missing.level >= passing.level


def test_rapid_growth_alone_refers() -> None:
    decision = run(rapid_growth=True)
    assert decision.level == "refer" and rules(decision) == ["rapid_growth"]
    assert "63%" in reason(decision, "rapid_growth").text
    assert decision.differential == []


@pytest.mark.parametrize("mimic", ["vasc", "other_benign", "df"])
def test_a_new_benign_mimic_with_risk_features_puts_mcc_on_the_differential(mimic: str) -> None:
    looks_benign = probs(**{mimic: 0.9, "nv": 0.1})
    # two AEIOU features in a new or enlarging lesion: the mimic rule's minimum
    decision = run(looks_benign, age=70, asymptomatic=True, new_or_enlarging_nodule=True)
    assert decision.level == "refer" and rules(decision) == ["mcc_mimic_with_context"]
    assert "56%" in reason(decision, "mcc_mimic_with_context").text
    assert workups(decision) == ["suspected_mcc"]
    assert rules(run(looks_benign, age=70, asymptomatic=True)) == ["no_rule_fired"]  # not new: no rule


@pytest.mark.parametrize("mimic", ["vasc", "other_benign", "df"])
def test_a_rapidly_growing_benign_mimic_is_clinically_suspected_mcc_and_urgent(mimic: str) -> None:
    decision = run(probs(**{mimic: 0.9, "nv": 0.1}), rapid_growth=True)
    assert decision.level == "urgent"
    assert rules(decision) == ["rapid_growth", "clinically_suspected_mcc", "mcc_mimic_with_context"]
    assert "rapid growth of a lesion the model reads as a benign" in reason(decision, "clinically_suspected_mcc").text


def test_a_non_neoplastic_call_is_no_mimic_because_validation_did_not_support_it() -> None:
    # experiments/referral_engine: as common among benign clinical photos as among the malignant ones missed
    assert "non_neoplastic" not in POLICY.mcc_mimic_classes
    decision = run(probs(non_neoplastic=0.9, nv=0.1), age=70, asymptomatic=True, new_or_enlarging_nodule=True)
    assert rules(decision) == ["no_rule_fired"]


def test_a_benign_mimic_without_context_or_with_one_feature_stays_routine() -> None:
    looks_benign = probs(vasc=0.9, nv=0.1)
    assert rules(run(looks_benign)) == ["no_rule_fired"]
    assert rules(run(looks_benign, age=70, new_or_enlarging_nodule=True)) == ["no_rule_fired"]
    naevus = probs(nv=0.9, vasc=0.1)  # a naevus call is no mimic
    assert rules(run(naevus, age=70, asymptomatic=True, new_or_enlarging_nodule=True)) == ["no_rule_fired"]


def test_a_bundle_without_a_gate_is_not_image_evidence_for_the_urgent_combination() -> None:
    decision = run(BENIGN, None, known_neuroendocrine_tumour=True, new_or_enlarging_nodule=True)
    assert decision.level == "refer"
    assert "context_and_image_evidence" not in rules(decision)
