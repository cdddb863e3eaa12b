"""How a referral decision looks to a person: the card the demo shows, as HTML built from library values.

Kept out of ``app.py`` so the page shows exactly what the library decided (the app only places it),
and so the same card can be tested without a browser. Every text is escaped: reasons may quote a
file name or a user-given body site.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from html import escape

import matplotlib
from PIL import Image

from skintriage import DISCLAIMER
from skintriage.data.taxonomy import DIAGNOSES
from skintriage.inference.explain import COLORMAP
from skintriage.triage.acquisition import NAMES, AcquisitionUsed
from skintriage.triage.referral import ACQUISITION_WORDS, Level, ReferralDecision, ReferralPolicy, ThresholdSource
from skintriage.triage.uncertainty import Uncertainty

WEBP_MAX_SIDE = 16383  # the largest width or height a WebP image can have
CHOSEN_BY = {"user": "as given", "model": "read by the model", "pooled": "not known"}
TOP_CLASSES = 3  # lesion types named in the card's evidence


LEVEL_STYLE = {  # background, text; WCAG AA contrast with white text
    Level.URGENT: ("#b91c1c", "URGENT REFERRAL"),
    Level.REFER: ("#b45309", "REFER"),
    Level.ROUTINE: ("#15803d", "ROUTINE REVIEW"),
}


def referral_card_html(
    decision: ReferralDecision,
    *,
    malignancy_probability: float | None = None,
    probabilities: Mapping[str, float] | None = None,
    uncertainty: Uncertainty | None = None,
    acquisition: AcquisitionUsed | None = None,
    validated_on: ThresholdSource | None = None,
) -> str:
    """The referral card, in the order a clinician reads it: one headline, how far to trust it, the evidence.

    The headline is the level and what to do (nothing else on the page competes with it). Then how this model
    did on validation photos of this type (``validated_on``) and whether this image is typical of its training
    images (``uncertainty``), then what the image showed the model in plain words (``probabilities``: the closest
    of the lesion types it knows; ``acquisition``: the photo type and its thresholds), the reasons, the
    differential, the limits and the disclaimer. Without an image (the referral-criteria tab) only the decision.
    """
    colour, badge = LEVEL_STYLE[decision.level]
    parts = [
        f'<div class="referral-card" data-level="{decision.level}" '
        f'style="border-left:8px solid {colour};padding:8px 14px">',
        f'<div class="headline"><span style="display:inline-block;background:{colour};color:#fff;font-weight:700;'
        f'font-size:1.3em;padding:4px 12px;border-radius:4px;margin-right:10px" data-testid="referral-level">'
        f'{badge}</span><b style="font-size:1.15em">{escape(decision.meaning.capitalize())}.</b></div>',
    ]
    trust = trust_html(validated_on, uncertainty)
    if trust:
        parts.append(trust)
    evidence = evidence_html(malignancy_probability, probabilities, acquisition)
    if evidence:
        parts.append(evidence)
    reasons = "".join(f"<li>{escape(r.text)}</li>" for r in decision.reasons)
    parts.append(f"<h4>Why this level</h4><ul>{reasons}</ul>")
    if decision.differential:
        differential = "".join(f"<li><b>{escape(d.name)}</b>: {escape(d.why)}</li>" for d in decision.differential)
        parts.append(f"<h4>Consider</h4><ul>{differential}</ul>")
    limits = "".join(f"<li>{escape(text)}</li>" for text in decision.limits)
    parts.append(f'<h4>Limits of this model</h4><ul class="limits">{limits}</ul>')
    parts.append(f'<p style="font-size:0.9em"><i>{escape(DISCLAIMER)}</i></p></div>')
    return "\n".join(parts)


def trust_html(validated_on: ThresholdSource | None, uncertainty: Uncertainty | None) -> str:
    """ "How far to trust this answer": the referral's validation result on this photo type, and the image's gate."""
    sentences = []
    if validated_on is not None and validated_on.n_images:
        kind = ACQUISITION_WORDS.get(validated_on.acquisition or "", ("", "images"))[1]
        if validated_on.acquisition is None or validated_on.fallback:
            kind = "validation images of both types"
        malignant = "" if validated_on.n_malignant is None else f", {validated_on.n_malignant} of them malignant"
        sentences.append(
            f"On {validated_on.n_images} {escape(kind)} of common skin lesions held out for validation{malignant}, "
            f"this model referred <b>{validated_on.referral_sensitivity:.0%} of the malignant</b> ones and left "
            f"<b>{validated_on.referral_specificity:.0%} of the benign</b> ones at routine review. None of them was "
            "a Merkel cell carcinoma or a metastasis: how it does on those is not known."
        )
    if uncertainty is not None:
        if uncertainty.cannot_assess:
            why = "unlike its training images" if uncertainty.out_of_distribution else "too uncertain between classes"
            sentences.append(f"This image: <b>unusual for the model ({why}): it cannot assess it</b>.")
        else:
            sentences.append("This image: typical of the model's training images.")
    if not sentences:
        return ""
    return f'<div class="trust"><h4>How far to trust this answer</h4><p>{" ".join(sentences)}</p></div>'


def evidence_html(
    malignancy_probability: float | None,
    probabilities: Mapping[str, float] | None,
    acquisition: AcquisitionUsed | None,
) -> str:
    """What the image showed the model, in plain words: its malignancy probability against the threshold used,
    the closest lesion types it knows (it has no MCC or metastasis class), and the photo type assumed."""
    sentences = []
    if malignancy_probability is not None:
        sentence = f"Probability that the lesion is malignant: <b>{malignancy_probability:.2f}</b>"
        if acquisition is not None:
            side = "at or above" if malignancy_probability >= acquisition.referral_threshold else "below"
            sentence += f", {side} the referral threshold {acquisition.referral_threshold:.3f}"
        sentences.append(sentence + ".")
    if probabilities:
        top = sorted(probabilities.items(), key=lambda item: item[1], reverse=True)[:TOP_CLASSES]
        shown = ", ".join(f"{escape(DIAGNOSES[code].name.lower())} {p:.0%}" for code, p in top)
        sentences.append(
            f"Closest of the {len(probabilities)} common lesion types it was trained on: {shown} (it has no class "
            "for Merkel cell carcinoma or metastasis, so it cannot name them)."
        )
    if not sentences:
        return ""
    parts = [f'<div class="evidence"><h4>What the image showed the model</h4><p>{" ".join(sentences)}</p>']
    if acquisition is not None:
        parts.append(acquisition_html(acquisition))
    parts.append("</div>")
    return "".join(parts)


def acquisition_html(used: AcquisitionUsed) -> str:
    """One paragraph: which photo type was assumed, chosen how, and which thresholds that selected."""
    kind = NAMES.get(used.kind, used.kind) if used.kind else "not known"
    probability = "" if used.probability is None else f", probability {used.probability:.2f}"
    return (
        f'<p class="acquisition" data-acquisition="{escape(used.kind or "")}" '
        f'data-calibration="{escape(used.calibration)}" style="font-size:0.9em">'
        f"Photo type: <b>{escape(kind)}</b> ({escape(CHOSEN_BY.get(used.chosen_by, used.chosen_by))}{probability}); "
        f"thresholds for this type: refer from {used.referral_threshold:.3f}, urgent from "
        f"{used.urgent_threshold:.3f}. {escape(used.why[:1].upper() + used.why[1:])}.</p>"
    )


def inline_image_html(image: Image.Image, *, alt: str, quality: int = 90) -> str:
    """``image`` as an ``<img>`` whose source is a ``data:image/webp`` URI: the bytes travel inside the HTML.

    How the demo shows images derived from a patient's photo (the Grad-CAM overlay): an output image
    component would be written to the server's file cache and served from there, this is never on disk.
    An image with a side over WebP's limit of 16383 px (a panorama) is shrunk to fit.
    """
    if max(image.size) > WEBP_MAX_SIDE:
        image = image.copy()
        image.thumbnail((WEBP_MAX_SIDE, WEBP_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img src="data:image/webp;base64,{encoded}" alt="{escape(alt)}" '
        f'width="{image.width}" height="{image.height}" style="max-width:100%;height:auto">'
    )


def saliency_html(overlay: Image.Image, *, note: str, whole_image_analysed: bool) -> str:
    """The Grad-CAM overlay inline, with a colour legend and what the faded part means.

    ``whole_image_analysed`` is False when the model saw only the central square of the photo (a
    landscape or portrait photo): the legend then says that a lesion in the faded strips was not seen.
    """
    stops = ", ".join(
        f"rgb{tuple(int(c * 255) for c in matplotlib.colormaps[COLORMAP](x)[:3])}" for x in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    faded = (
        "<br>Faded: outside the central square the model analyses; a lesion there was not seen, crop the photo "
        "around the lesion and assess again."
        if not whole_image_analysed
        else ""
    )
    return (
        f"{inline_image_html(overlay, alt=note)}"
        '<div class="saliency-legend" style="font-size:0.85em;margin-top:4px">'
        f'<div style="height:10px;border-radius:2px;background:linear-gradient(to right, {stops})"></div>'
        '<div style="display:flex;justify-content:space-between"><span>raised the malignancy probability: '
        "none</span><span>most</span></div>"
        f"{escape(note)}{faded}</div>"
    )


def threshold_scale_html(policy: ReferralPolicy, value: float | None = None) -> str:
    """A 0-1 scale under the referral-criteria slider: routine / refer / urgent bands at this policy's thresholds.

    The slider itself cannot carry marks; this draws the bands of the photo type chosen, and the slider's value.
    """
    refer, urgent = policy.referral_threshold, policy.urgent_threshold
    bands = [(Level.ROUTINE, 0.0, refer), (Level.REFER, refer, urgent), (Level.URGENT, urgent, 1.0)]
    segments = "".join(
        f'<div title="{name}" style="width:{(stop - start) * 100:.2f}%;background:{LEVEL_STYLE[name][0]}"></div>'
        for name, start, stop in bands
    )
    marker = (
        ""
        if value is None
        else f'<div style="position:absolute;left:calc({value * 100:.2f}% - 1px);top:-3px;width:3px;height:18px;'
        'background:#111"></div>'
    )
    kind = "pooled" if policy.source is None or policy.source.acquisition is None else policy.source.acquisition
    return (
        f'<div class="threshold-scale" data-referral="{refer:.3f}" data-urgent="{urgent:.3f}">'
        '<div style="position:relative;display:flex;height:12px;border-radius:3px;overflow:visible">'
        f"{segments}{marker}</div>"
        f'<div style="font-size:0.85em;margin-top:4px">{escape(kind)} thresholds: refer from <b>{refer:.3f}</b>, '
        f"urgent from <b>{urgent:.3f}</b> (fitted on validation images; the black mark is the slider's value)</div>"
        "</div>"
    )
