"""skintriage demo: `python app.py` serves it on http://127.0.0.1:7860 with the bundled model.

Widgets wired to library calls, nothing else: the decision comes from skintriage.predict / referral, the
card from skintriage.cards, the guidance from skintriage.guidance. Research prototype, not a medical device.

Privacy: binds to 127.0.0.1 unless --host says otherwise, never creates a share link, sends no analytics,
deletes each uploaded image from Gradio's upload cache as soon as it has been read, sends the Grad-CAM overlay
inside the HTML (never written to disk), sweeps the cache of uploads never assessed (CACHE_SWEEP_S), and keeps
file names and clinical context out of the log (refusals are not printed; uvicorn logs warnings only).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import tempfile
from pathlib import Path

import gradio as gr

from skintriage import DISCLAIMER
from skintriage.acquisition import AUTO, check_request
from skintriage.cards import inline_image_html, referral_card_html
from skintriage.checkpoint import DEFAULT_BUNDLE
from skintriage.data.images import ImageDecodeError, decode_image
from skintriage.guidance import load_guidance, render_markdown
from skintriage.predict import Predictor
from skintriage.referral import SITES, ClinicalContext, illustrative_decision
from skintriage.taxonomy import DIAGNOSES

DEFAULT_EXAMPLES = Path(__file__).resolve().parent.parent / "shared/data/ham10000_isic2018_224/images/isic2018_test"
MAX_EXAMPLES = 12
OVERLAY_MAX_SIDE = 1600  # pixels, the longer side of the Grad-CAM overlay sent to the page
CACHE_SWEEP_S = (300, 900)  # every 5 min, delete cached files older than 15 min (uploads never assessed)
PHOTO_TYPES = [("Automatic", AUTO), ("Dermoscopic", "dermoscopic"), ("Clinical photo", "clinical")]  # label, value
CONTEXT_FLAGS = {  # checkbox label -> ClinicalContext field
    "New or enlarging nodule": "new_or_enlarging_nodule",
    "Asymptomatic (not tender)": "asymptomatic",
    "Expanding rapidly (within 3 months)": "rapid_growth",
    "Immune suppression": "immunosuppressed",
    "Known neuroendocrine tumour": "known_neuroendocrine_tumour",
    "Known other internal cancer": "known_other_primary_cancer",
    "Previous Merkel cell carcinoma": "prior_mcc",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (default: loopback only).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_BUNDLE, help="Model bundle folder.")
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES, help="Folder of example images.")
    parser.add_argument("--max-upload-mb", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2, help="Requests processed at once (CPU cores).")
    return parser.parse_args(argv)


def example_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return [str(p) for p in sorted(folder.glob("*.jpg"))[:MAX_EXAMPLES]]


SKIN_TYPES = {"not given": None, "fair": True, "not fair": False}  # radio value -> ClinicalContext.fair_skin


def context_from(
    age: float | None, site: str | None, flags: list[str], skin: str | None = "not given"
) -> ClinicalContext:
    unknown = [label for label in flags or [] if label not in CONTEXT_FLAGS]
    if unknown:
        raise ValueError(f"unknown finding {unknown[0]!r}; choose from: {', '.join(CONTEXT_FLAGS)}")
    if (skin or "not given") not in SKIN_TYPES:
        raise ValueError(f"unknown skin type {skin!r}; choose from: {', '.join(SKIN_TYPES)}")
    chosen = {CONTEXT_FLAGS[label]: True for label in flags or []}
    # an empty gr.Number arrives as 0 (gradio shows 0 for no value): read 0 as "not given"; an infinite or NaN age
    # goes to ClinicalContext as it is, which refuses it in words (int() of it would raise a bare OverflowError)
    years = (int(age) if math.isfinite(age) else age) if age else None
    return ClinicalContext(age=years, site=site or None, fair_skin=SKIN_TYPES[skin or "not given"], **chosen)


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def discard_upload(path: str, keep: frozenset[str] = frozenset()) -> None:
    """Delete an uploaded file from Gradio's cache: never a file outside it, nor the cached copy of an example
    (Gradio stores files by content, so an example picked in the gallery and its cached copy are one file)."""
    cache = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio")).resolve()
    file = Path(path).resolve()
    if cache in file.parents and file.is_file() and digest(file) not in keep:
        file.unlink(missing_ok=True)
        if file.parent != cache and not any(file.parent.iterdir()):
            file.parent.rmdir()


def unopened(image: gr.Image) -> gr.Image:
    """Make `image` hand its upload to the handler as Gradio's cached file, unopened and unconverted.

    gr.Image's own preprocessing opens the file with PIL first: a file PIL cannot read fails there, before the handler
    runs, so it is neither refused in the app's words nor deleted, and Gradio prints its path (the patient's file
    name) to the log; a non-RGB image is converted into a second cached file and the original left behind. With
    this, the library decodes the file (with its format and size checks) and the handler deletes it either way.
    (Set on the instance: a gr.Image subclass would make Gradio write a .pyi stub next to this file.)
    """
    preprocess = image.preprocess

    def cached_path(payload):
        if payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return payload.path  # Gradio checked that it lies in its upload cache
        return preprocess(payload)

    image.preprocess = cached_path
    return image


def refusal(message: str) -> gr.Error:
    """A message for the user that is not printed to the server's log (it may quote a file name or the context)."""
    return gr.Error(message, print_exception=False)


def build(predictor: Predictor, examples: list[str]) -> gr.Blocks:
    kb = load_guidance()
    example_digests = frozenset(digest(path) for path in examples)
    card_path = predictor.bundle.path / "MODEL_CARD.md"
    model_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "No model card in this bundle."

    def triage(
        image_path: str | None,
        age: float | None,
        site: str | None,
        flags: list[str],
        photo_type: str = AUTO,
        skin: str = "not given",
    ):
        if image_path is None:
            raise refusal("Upload a photograph of the lesion first.")
        try:
            image = decode_image(image_path, name=Path(image_path).name)
        except (ImageDecodeError, OSError) as error:
            raise refusal(str(error)) from None
        finally:
            discard_upload(image_path, example_digests)
        try:
            context = context_from(age, site, flags, skin)
            acquisition = check_request(photo_type or AUTO)
        except ValueError as error:
            raise refusal(str(error)) from None
        prediction = predictor.predict(image, context, with_saliency=True, acquisition=acquisition)
        card = referral_card_html(
            prediction.referral,
            malignancy_probability=prediction.malignancy_probability,
            class_call=prediction.class_call,
            uncertainty=None if prediction.uncertainty is None else prediction.uncertainty.score,
            acquisition=prediction.acquisition,
        )
        label = {DIAGNOSES[c].name: p for c, p in prediction.probabilities.items()}
        guidance = render_markdown(kb, topics=prediction.guidance_topics) if prediction.guidance_topics else ""
        shown = image.copy()  # a screen shows the overlay a few hundred pixels wide: draw it on a capped copy
        shown.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))  # (a 27 MP photo took 9 s to blend and 4 s to encode)
        shown = inline_image_html(predictor.overlay(shown, prediction.heatmap), alt=prediction.saliency_note or "")
        return card, label, shown, prediction.saliency_note, guidance, prediction.to_dict()

    def explore(malignancy, non_pigmented, out_of_distribution, low_confidence, age, site, flags, skin):
        try:
            decision = illustrative_decision(
                float(malignancy),
                non_pigmented=non_pigmented,
                out_of_distribution=out_of_distribution,
                low_confidence=low_confidence,
                context=context_from(age, site, flags, skin),
                policy=predictor.policy,
            )
        except ValueError as error:
            raise refusal(str(error)) from None
        return referral_card_html(decision, malignancy_probability=float(malignancy))

    def context_inputs():
        with gr.Accordion("Clinical context (optional)", open=True):
            # no minimum/maximum: Gradio would refuse an out-of-range age before the handler runs, printing the value
            # and leaving the upload in its cache; the library refuses it instead (ClinicalContext: 0 to 120)
            age = gr.Number(label="Age (years)", precision=0)
            site = gr.Dropdown(choices=SITES, label="Body site", value=None)
            skin = gr.Radio(choices=list(SKIN_TYPES), value="not given", label="Fair skin (for the U of AEIOU)")
            flags = gr.CheckboxGroup(choices=list(CONTEXT_FLAGS), label="Findings and history")
        return age, site, skin, flags

    with gr.Blocks(title="skintriage: research prototype", analytics_enabled=False, delete_cache=CACHE_SWEEP_S) as demo:
        gr.Markdown(
            f"# skintriage: skin-lesion triage for Merkel cell carcinoma and cutaneous metastasis\n**{DISCLAIMER}**"
        )
        with gr.Tab("Triage"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = unopened(
                        gr.Image(
                            type="filepath",
                            label="Lesion photograph",
                            sources=["upload", "clipboard"],
                            elem_id="upload",
                        )
                    )
                    photo_type = gr.Radio(choices=PHOTO_TYPES, value=AUTO, label="Photo type", elem_id="photo-type")
                    age, site, skin, flags = context_inputs()
                    assess = gr.Button("Assess", variant="primary", elem_id="assess")
                    if examples:
                        gr.Examples(examples=examples, inputs=image, label="Examples (ISIC 2018 test images)")
                with gr.Column(scale=2):
                    card = gr.HTML(elem_id="referral-card")
                    with gr.Row():
                        probabilities = gr.Label(label="Calibrated probabilities (training case mix)", num_top_classes=5,
                                                 elem_id="probabilities")  # fmt: skip
                        overlay = gr.HTML(label="Grad-CAM: what raised the malignancy probability", show_label=True,
                                          container=True, elem_id="saliency")  # fmt: skip
                    saliency_note = gr.Markdown(elem_id="saliency-note")
                    guidance = gr.Markdown(elem_id="guidance")
                    with gr.Accordion("Raw output (JSON)", open=False):
                        raw = gr.JSON(elem_id="triage-json")
            assess.click(
                triage,
                inputs=[image, age, site, flags, photo_type, skin],
                outputs=[card, probabilities, overlay, saliency_note, guidance, raw],
                api_name="triage",
            )
        with gr.Tab("Referral criteria"):
            gr.Markdown(
                "How the referral engine decides, without an image: describe the model's output and the patient, "
                "and see the level and the reasons change. The thresholds are this model's validated ones."
            )
            with gr.Row():
                with gr.Column():
                    # opens on a case where nothing fires: half this bundle's referral threshold
                    start = round(predictor.policy.referral_threshold / 2, 2)
                    malignancy = gr.Slider(0, 1, value=start, step=0.01, label="Malignancy probability")
                    non_pigmented = gr.Checkbox(label="Non-pigmented malignant pattern (SCC-like)")
                    ood = gr.Checkbox(label="Image unlike the training data (out of distribution)")
                    uncertain = gr.Checkbox(label="Prediction too uncertain")
                    e_age, e_site, e_skin, e_flags = context_inputs()
                with gr.Column():
                    criteria_card = gr.HTML(elem_id="criteria-card")
            criteria_inputs = [malignancy, non_pigmented, ood, uncertain, e_age, e_site, e_flags, e_skin]
            for widget in criteria_inputs:
                widget.change(explore, inputs=criteria_inputs, outputs=criteria_card, api_name=False)
            demo.load(explore, inputs=criteria_inputs, outputs=criteria_card, api_name=False)
        with gr.Tab("Work-up guide"):
            gr.Markdown(render_markdown(kb), elem_id="workup-guide")
        with gr.Tab("About the model"):
            gr.Markdown(model_card, elem_id="model-card")
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    predictor = Predictor.load(args.checkpoint)
    examples = example_images(args.examples)
    demo = build(predictor, examples)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        run_history=False,  # gradio 6 would keep each run (inputs, outputs) in the browser, and offers to upload them
        max_file_size=f"{args.max_upload_mb}mb",
        allowed_paths=[str(args.examples)] if examples else None,
        show_error=False,
    )


if __name__ == "__main__":
    main()
