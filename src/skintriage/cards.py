"""How a referral decision looks to a person: the card the demo shows, as HTML built from library values.

Kept out of ``app.py`` so the page shows exactly what the library decided (the app only places it),
and so the same card can be tested without a browser. Every text is escaped: reasons may quote a
file name or a user-given body site.
"""

from __future__ import annotations

import base64
import io
from html import escape

from PIL import Image

from skintriage import DISCLAIMER
from skintriage.acquisition import NAMES, AcquisitionUsed
from skintriage.referral import ReferralDecision
from skintriage.taxonomy import DIAGNOSES

WEBP_MAX_SIDE = 16383  # the largest width or height a WebP image can have
CHOSEN_BY = {"user": "as given", "model": "read by the model", "pooled": "not known"}

LEVEL_STYLE = {  # background, text; WCAG AA contrast with white text
    "urgent": ("#b91c1c", "URGENT REFERRAL"),
    "refer": ("#b45309", "REFER"),
    "routine": ("#15803d", "ROUTINE REVIEW"),
}


def referral_card_html(
    decision: ReferralDecision,
    *,
    malignancy_probability: float | None = None,
    class_call: str | None = None,
    uncertainty: float | None = None,
    acquisition: AcquisitionUsed | None = None,
) -> str:
    """The referral card: level badge, what it means, the reasons, the differential, limits and disclaimer.

    ``acquisition``: the photo type the prediction assumed and the thresholds that selected, shown under the facts.
    """
    colour, badge = LEVEL_STYLE[decision.level]
    facts = []
    if malignancy_probability is not None:
        facts.append(f"Malignancy probability <b>{malignancy_probability:.2f}</b>")
    if class_call is not None:
        facts.append(f"class call <b>{escape(DIAGNOSES[class_call].name)}</b> (adjusted for class frequency)")
    if uncertainty is not None:
        facts.append(f"uncertainty <b>{uncertainty:.2f}</b> (above 1: cannot assess)")
    reasons = "".join(f"<li>{escape(r.text)}</li>" for r in decision.reasons)
    differential = "".join(f"<li><b>{escape(d.name)}</b>: {escape(d.why)}</li>" for d in decision.differential)
    limits = "".join(f"<li>{escape(text)}</li>" for text in decision.limits)
    parts = [
        f'<div class="referral-card" data-level="{decision.level}" '
        f'style="border-left:8px solid {colour};padding:8px 14px">',
        f'<div style="display:inline-block;background:{colour};color:#fff;font-weight:700;font-size:1.3em;'
        f'padding:4px 12px;border-radius:4px" data-testid="referral-level">{badge}</div>',
        f"<p><b>{escape(decision.meaning.capitalize())}.</b></p>",
    ]
    if facts:
        parts.append(f"<p>{'; '.join(facts)}.</p>")
    if acquisition is not None:
        parts.append(acquisition_html(acquisition))
    parts.append(f"<h4>Why</h4><ul>{reasons}</ul>")
    if differential:
        parts.append(f"<h4>Consider</h4><ul>{differential}</ul>")
    parts.append(f'<h4>Limits of this model</h4><ul class="limits">{limits}</ul>')
    parts.append(f'<p style="font-size:0.9em"><i>{escape(DISCLAIMER)}</i></p></div>')
    return "\n".join(parts)


def acquisition_html(used: AcquisitionUsed) -> str:
    """One paragraph: which photo type, chosen how, and the thresholds it selected (with the reason in full)."""
    kind = NAMES.get(used.kind, used.kind) if used.kind else "not known"
    probability = "" if used.probability is None else f", probability {used.probability:.2f}"
    return (
        f'<p class="acquisition" data-acquisition="{escape(used.kind or "")}" '
        f'data-calibration="{escape(used.calibration)}">'
        f"Photo type <b>{escape(kind)}</b> ({escape(CHOSEN_BY.get(used.chosen_by, used.chosen_by))}{probability}); "
        f"thresholds used: referral <b>{used.referral_threshold:.3f}</b>, urgent <b>{used.urgent_threshold:.3f}</b> "
        f"({escape(used.calibration)} calibration, temperature {used.temperature:.2f}).<br>"
        f'<span style="font-size:0.9em">{escape(used.why[:1].upper() + used.why[1:])}.</span></p>'
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
