"""The referral card outside the browser: what a person must see on it, for decisions made by the real engine.

The decisions come from :func:`skintriage.triage.referral.decide` (a routine, a refer, an urgent and a
cannot-assess case) with a hand-made policy, so that every number on the card is known in advance. The HTML
is read back with :mod:`html.parser`: texts are compared unescaped, and markup that a reason, a file name
or a photo type could smuggle in must come back as text, never as an element or an attribute.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from PIL import Image

from skintriage import DISCLAIMER
from skintriage.triage.acquisition import AcquisitionUsed, choose_acquisition
from skintriage.triage.calibration import AcquisitionCalibration
from skintriage.triage.referral import (
    DifferentialEntry,
    Level,
    Reason,
    ReferralDecision,
    ReferralPolicy,
    ThresholdSource,
    decide,
    illustrative_decision,
)
from skintriage.triage.uncertainty import Uncertainty
from skintriage.ui.cards import (
    LEVEL_STYLE,
    acquisition_html,
    evidence_html,
    referral_card_html,
    saliency_html,
    threshold_scale_html,
    trust_html,
)

# --- reading HTML back ----------------------------------------------------------------------------------

VOID = {"img", "br", "hr", "input", "meta", "link"}
BLOCKS = {"div", "p", "h4", "ul", "li", "br"}  # a reader sees a break between these: their texts get a space


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The element's text with entities decoded, as a reader sees it."""
        return "".join(self.parts)


class Elements(HTMLParser):
    """Every element of a fragment, in document order, each with all the text inside it."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCKS:
            self.handle_data(" ")
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.parts.append(data)

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements of ``tag`` (any tag: None) whose attributes include ``attrs`` (``data_level`` for data-level)."""
        wanted = {key.replace("_", "-"): value for key, value in attrs.items()}
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag) and all(e.attrs.get(k) == v for k, v in wanted.items())
        ]

    @property
    def text(self) -> str:
        return " ".join(self.elements[0].text.split()) if self.elements else ""


def list_under(page: Elements, heading: str) -> list[str]:
    """The texts of the ``<li>`` items of the list that follows the ``<h4>`` ``heading``."""
    elements = page.elements
    start = next(i for i, e in enumerate(elements) if e.tag == "h4" and e.text == heading)
    items = []
    for e in elements[start + 2 :]:  # the <ul> after the heading, then its items
        if e.tag != "li" and e.tag != "b":
            break
        if e.tag == "li":
            items.append(e.text)
    return items


# --- the decisions --------------------------------------------------------------------------------------

CLINICAL = ThresholdSource(
    acquisition="clinical",
    n_images=412,
    n_malignant=57,
    referral_sensitivity=0.947,
    referral_specificity=0.612,
    urgent_sensitivity=0.512,
    urgent_specificity=0.951,
)
POLICY = ReferralPolicy(
    referral_threshold=0.2, urgent_threshold=0.6, source=CLINICAL, training_sources=("ham10000", "dermnet")
)
TYPICAL = Uncertainty(
    score=0.4, ood_distance=1.0, ood_threshold=3.0, entropy=0.2, entropy_threshold=0.77,
    out_of_distribution=False, low_confidence=False,
)  # fmt: skip
UNUSUAL = Uncertainty(
    score=2.0, ood_distance=6.0, ood_threshold=3.0, entropy=0.2, entropy_threshold=0.77,
    out_of_distribution=True, low_confidence=False,
)  # fmt: skip
UNCERTAIN = Uncertainty(
    score=1.2, ood_distance=1.0, ood_threshold=3.0, entropy=0.92, entropy_threshold=0.77,
    out_of_distribution=False, low_confidence=True,
)  # fmt: skip

# malignancy probability = mel + bcc: 0.08 routine, 0.35 refer (>= 0.2), 0.80 urgent (>= 0.6)
LOW = {"mel": 0.05, "bcc": 0.03, "nv": 0.80, "bkl": 0.12}
MIDDLE = {"mel": 0.30, "bcc": 0.05, "nv": 0.60, "bkl": 0.05}
HIGH = {"mel": 0.70, "bcc": 0.10, "nv": 0.15, "bkl": 0.05}
CASES = {  # name: probabilities, uncertainty, level, malignancy probability, the rule that decides
    "routine": (LOW, TYPICAL, Level.ROUTINE, 0.08, "no_rule_fired"),
    "refer": (MIDDLE, TYPICAL, Level.REFER, 0.35, "malignancy_above_referral_threshold"),
    "urgent": (HIGH, TYPICAL, Level.URGENT, 0.80, "malignancy_above_urgent_threshold"),
    "cannot_assess": (LOW, UNUSUAL, Level.REFER, 0.08, "out_of_distribution"),
}
BADGE = {Level.ROUTINE: "ROUTINE REVIEW", Level.REFER: "REFER", Level.URGENT: "URGENT REFERRAL"}

CLINICAL_FIT = AcquisitionCalibration(
    temperature=1.3, referral_threshold=0.2, target_sensitivity=0.95, validation={}, urgent={"threshold": 0.6}
)
POOLED_FIT = AcquisitionCalibration(
    temperature=1.1, referral_threshold=0.25, target_sensitivity=0.95, validation={}, urgent={"threshold": 0.7}
)
READ_CLINICAL = choose_acquisition("auto", ("clinical", 0.87), {"clinical": CLINICAL_FIT}, POOLED_FIT)


def card_for(name: str) -> tuple[ReferralDecision, str]:
    probabilities, uncertainty, _, malignancy, _ = CASES[name]
    decision = decide(probabilities, uncertainty, None, POLICY)
    html = referral_card_html(
        decision,
        malignancy_probability=malignancy,
        probabilities=probabilities,
        uncertainty=uncertainty,
        acquisition=READ_CLINICAL,
        validated_on=CLINICAL,
    )
    return decision, html


@pytest.mark.parametrize("name", CASES)
def test_the_engine_decides_each_case_as_planned(name: str) -> None:
    decision, _ = card_for(name)
    _, _, level, _, rule = CASES[name]
    assert decision.level == level
    assert rule in [r.rule for r in decision.reasons]


# --- the card -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_the_badge_shows_the_decisions_level(name: str) -> None:
    decision, html = card_for(name)
    page = Elements(html)

    (card,) = page.find("div", **{"class": "referral-card"})
    assert card.attrs["data-level"] == decision.level.value
    (badge,) = page.find("span", data_testid="referral-level")
    assert badge.text == BADGE[decision.level]
    assert LEVEL_STYLE[decision.level][0] in badge.attrs["style"]  # the level's colour
    (headline,) = page.find("div", **{"class": "headline"})
    assert headline.text == f"{BADGE[decision.level]}{decision.meaning.capitalize()}."


@pytest.mark.parametrize("name", CASES)
def test_the_card_shows_every_reason_limit_and_the_disclaimer(name: str) -> None:
    decision, html = card_for(name)
    page = Elements(html)

    assert list_under(page, "Why this level") == [r.text for r in decision.reasons]
    (limits,) = page.find("ul", **{"class": "limits"})
    assert list_under(page, "Limits of this model") == decision.limits
    assert "Research prototype, not a diagnostic device" in limits.text
    assert "ham10000, dermnet" in limits.text  # the training data, named
    assert DISCLAIMER in page.text  # the statement that this is a research prototype, whole
    if decision.differential:
        assert list_under(page, "Consider") == [f"{d.name}: {d.why}" for d in decision.differential]


def test_the_card_reads_in_order_headline_trust_evidence_reasons_limits_disclaimer() -> None:
    _, html = card_for("refer")
    marks = [
        'data-testid="referral-level"',
        "How far to trust this answer",
        "What the image showed the model",
        "Why this level",
        "Consider",
        "Limits of this model",
        "Research prototype, not a medical device",
    ]
    positions = [html.index(mark) for mark in marks]
    assert positions == sorted(positions)


def test_the_threshold_reasons_quote_the_validation_numbers() -> None:
    refer, _ = card_for("refer")
    urgent, _ = card_for("urgent")
    routine, _ = card_for("routine")
    (refer_reason,) = [r.text for r in refer.reasons if r.rule == "malignancy_above_referral_threshold"]
    assert refer_reason.startswith("Malignancy probability 0.350 is at or above the referral threshold 0.200 ")
    assert "on 412 clinical validation images of common skin lesions (57 malignant, " in refer_reason
    assert "sensitivity 0.947 and specificity 0.612" in refer_reason
    (urgent_reason,) = [r.text for r in urgent.reasons if r.rule == "malignancy_above_urgent_threshold"]
    assert "0.800 is at or above the urgent threshold 0.600" in urgent_reason
    assert "sensitivity 0.512 and specificity 0.951" in urgent_reason
    (routine_reason,) = [r.text for r in routine.reasons]
    assert "malignancy probability 0.080 is below the referral threshold 0.200 (the clinical-photo threshold)" in (
        routine_reason
    )


def test_a_cannot_assess_card_says_so_and_names_it_in_the_differential() -> None:
    decision, html = card_for("cannot_assess")
    page = Elements(html)
    (trust,) = page.find("div", **{"class": "trust"})
    assert "This image: unusual for the model (unlike its training images): it cannot assess it." in trust.text
    assert "Not assessable by the model" in [d.name for d in decision.differential]
    assert any("unlike its training images" in item for item in list_under(page, "Why this level"))


def test_a_card_without_an_image_has_no_trust_block_and_no_photo_type() -> None:
    decision = illustrative_decision(0.35, policy=POLICY)
    page = Elements(referral_card_html(decision, malignancy_probability=0.35))
    assert page.find("span", data_testid="referral-level")[0].text == "REFER"
    assert not page.find("div", **{"class": "trust"})
    evidence = page.find("div", **{"class": "evidence"})
    assert len(evidence) == 1 and "Probability that the lesion is malignant: 0.35." in evidence[0].text
    assert not page.find("p", **{"class": "acquisition"})  # no photo, no photo type


# --- trust, evidence, acquisition -----------------------------------------------------------------------


def test_trust_states_the_validation_result_with_its_counts() -> None:
    page = Elements(trust_html(CLINICAL, TYPICAL))
    assert page.text == (
        "How far to trust this answer "
        "On 412 clinical photos of common skin lesions held out for validation, 57 of them malignant, this model "
        "referred 95% of the malignant ones and left 61% of the benign ones at routine review. None of them was a "
        "Merkel cell carcinoma or a metastasis: how it does on those is not known. "
        "This image: typical of the model's training images."
    )


def test_trust_of_pooled_or_fallback_thresholds_says_both_types() -> None:
    pooled = ThresholdSource(None, 900, None, 0.951, 0.55, 0.4, 0.95)
    fallback = ThresholdSource("clinical", 900, 120, 0.951, 0.55, 0.4, 0.95, fallback="pooled: only 3 clinical ...")
    assert "On 900 validation images of both types of common skin lesions held out for validation, this model" in (
        Elements(trust_html(pooled, None)).text
    )  # no malignant count recorded: none stated
    assert "On 900 validation images of both types of common skin lesions held out for validation, 120 of them" in (
        Elements(trust_html(fallback, None)).text
    )


def test_trust_says_why_an_image_cannot_be_assessed() -> None:
    assert "(too uncertain between classes): it cannot assess it" in Elements(trust_html(None, UNCERTAIN)).text
    assert trust_html(None, None) == ""
    assert trust_html(ThresholdSource("clinical", 0, None, 0.9, 0.5, 0.4, 0.95), None) == ""  # nothing validated


def test_evidence_gives_the_probability_against_the_threshold_and_the_closest_types() -> None:
    refer = Elements(evidence_html(0.35, MIDDLE, READ_CLINICAL))
    assert refer.text.startswith(
        "What the image showed the model Probability that the lesion is malignant: 0.35, at or above the referral "
        "threshold 0.200. Closest of the 4 common lesion types it was trained on: melanocytic naevus 60%, "
        "melanoma 30%, basal cell carcinoma 5% (it has no class for Merkel cell carcinoma or metastasis"
    )
    routine = Elements(evidence_html(0.08, LOW, READ_CLINICAL))
    assert "0.08, below the referral threshold 0.200." in routine.text
    assert evidence_html(None, None, None) == ""


def test_acquisition_names_the_photo_type_how_it_was_chosen_and_its_thresholds() -> None:
    (paragraph,) = Elements(acquisition_html(READ_CLINICAL)).find("p")
    assert paragraph.attrs["data-acquisition"] == "clinical" and paragraph.attrs["data-calibration"] == "clinical"
    assert paragraph.text == (
        "Photo type: clinical photo (read by the model, probability 0.87); thresholds for this type: refer from "
        "0.200, urgent from 0.600. The model reads it as a clinical photo (probability 0.87); the temperature and "
        "thresholds fitted on clinical validation images are used."
    )
    pooled = choose_acquisition("auto", None, {}, POOLED_FIT)
    text = Elements(acquisition_html(pooled)).text
    assert text.startswith("Photo type: not known (not known); thresholds for this type: refer from 0.250, urgent")


# --- escaping -------------------------------------------------------------------------------------------

SCRIPT = '<script>alert("x")</script>'


def test_the_card_escapes_every_text() -> None:
    decision = ReferralDecision(
        level=Level.REFER,
        meaning="refer <now> & fast",
        reasons=[Reason("malignancy_above_referral_threshold", f"{SCRIPT} in IMG_<1>.jpg", Level.REFER)],
        differential=[DifferentialEntry("other_malignant", "<img src=x onerror=alert(1)>", "<b>bold</b>", "x")],
        limits=["a limit & <i>markup</i>"],
    )

    html = referral_card_html(decision)
    page = Elements(html)

    assert "<script" not in html and "<img" not in html and "<i>markup" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert not page.find("script") and not page.find("img")
    assert list_under(page, "Why this level") == [f"{SCRIPT} in IMG_<1>.jpg"]  # shown as the text it is
    assert list_under(page, "Consider") == ["<img src=x onerror=alert(1)>: <b>bold</b>"]
    assert list_under(page, "Limits of this model") == ["a limit & <i>markup</i>"]
    assert page.find("div", **{"class": "headline"})[0].text == "REFERRefer <now> & fast."


def test_acquisition_escapes_attributes_and_texts() -> None:
    odd = AcquisitionUsed(
        kind='x" onmouseover="alert(1)',
        chosen_by="user",
        probability=None,
        calibration="<c>",
        temperature=1.0,
        referral_threshold=0.2,
        urgent_threshold=0.6,
        why=f"you said {SCRIPT}",
    )
    html = acquisition_html(odd)
    (paragraph,) = Elements(html).find("p")
    assert "onmouseover" not in paragraph.attrs  # the quote did not end the attribute
    assert paragraph.attrs["data-acquisition"] == odd.kind and paragraph.attrs["data-calibration"] == "<c>"
    assert "<script" not in html and f"You said {SCRIPT}." in paragraph.text


def test_the_threshold_scale_escapes_the_photo_type() -> None:
    source = ThresholdSource("<b>odd</b>", 10, 2, 0.9, 0.5, 0.4, 0.95)
    policy = ReferralPolicy(referral_threshold=0.2, urgent_threshold=0.6, source=source)
    html = threshold_scale_html(policy)
    assert "<b>odd</b>" not in html and "&lt;b&gt;odd&lt;/b&gt; thresholds" in html


# --- the Grad-CAM overlay -------------------------------------------------------------------------------

DATA_URI = re.compile(r'^<img src="data:image/webp;base64,([A-Za-z0-9+/=]+)"')


def test_saliency_inlines_the_overlay_as_a_data_uri() -> None:
    overlay = Image.new("RGB", (20, 10), (240, 120, 30))
    note = f"Heat map of {SCRIPT} & co"

    html = saliency_html(overlay, note=note, whole_image_analysed=True)

    encoded = DATA_URI.match(html)
    assert encoded, html[:80]
    with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as decoded:
        assert decoded.format == "WEBP" and decoded.size == (20, 10)
    page = Elements(html)
    (image,) = page.find("img")
    assert image.attrs["src"].startswith("data:image/webp;base64,")  # the bytes themselves, never a path or URL
    assert image.attrs["alt"] == note and (image.attrs["width"], image.attrs["height"]) == ("20", "10")
    around = html.replace(encoded.group(1), "")  # the rest of the fragment: no path, no URL, no markup let through
    assert "file=" not in around and "/tmp" not in around and "http" not in around and "<script" not in around
    (legend,) = page.find("div", **{"class": "saliency-legend"})
    assert "raised the malignancy probability: none" in legend.text and legend.text.endswith(note)
    assert "Faded" not in legend.text


def test_saliency_of_a_cropped_photo_says_what_was_not_seen() -> None:
    html = saliency_html(Image.new("RGB", (30, 10)), note="Heat map", whole_image_analysed=False)
    assert "Faded: outside the central square the model analyses; a lesion there was not seen" in html


# --- the threshold scale --------------------------------------------------------------------------------

WIDTH = re.compile(r"width:([0-9.]+)%")
MARK = re.compile(r"left:calc\(([0-9.]+)% - 1px\)")


def bands(html: str) -> list[tuple[str, float, float]]:
    """(level, start %, stop %) of each coloured band, left to right."""
    out, start = [], 0.0
    for band in Elements(html).find("div"):
        if "title" in band.attrs:
            width = float(WIDTH.search(band.attrs["style"]).group(1))
            out.append((band.attrs["title"], start, start + width))
            start += width
    return out


def test_the_scale_draws_the_three_bands_at_the_policys_thresholds() -> None:
    html = threshold_scale_html(POLICY)

    assert [(name, round(start, 6), round(stop, 6)) for name, start, stop in bands(html)] == [
        ("routine", 0, 20),
        ("refer", 20, 60),
        ("urgent", 60, 100),
    ]
    for band in Elements(html).find("div"):
        if "title" in band.attrs:
            assert LEVEL_STYLE[Level(band.attrs["title"])][0] in band.attrs["style"]  # the badge's colour
    (scale,) = Elements(html).find("div", **{"class": "threshold-scale"})
    assert (scale.attrs["data-referral"], scale.attrs["data-urgent"]) == ("0.200", "0.600")
    assert "clinical thresholds: refer from 0.200, urgent from 0.600" in scale.text
    assert not MARK.search(html)  # no value, no mark
    pooled = ReferralPolicy(referral_threshold=0.2, urgent_threshold=0.6)
    assert "pooled thresholds: refer from 0.200" in Elements(threshold_scale_html(pooled)).text


@pytest.mark.parametrize("value", [0.0, 0.1, 0.2, 0.35, 0.6, 0.8, 1.0])
def test_the_scale_marks_the_value_in_the_band_of_the_level_it_gets(value: float) -> None:
    html = threshold_scale_html(POLICY, value)

    (mark,) = MARK.findall(html)
    assert float(mark) == pytest.approx(value * 100)
    level = illustrative_decision(value, policy=POLICY).level
    # the band the mark lies in (a threshold itself belongs to the higher band: referral is score >= threshold)
    inside = [name for name, start, stop in bands(html) if start <= value * 100 < stop or stop == value * 100 == 100]
    assert inside == [level.value]
