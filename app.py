"""skintriage demo: `python app.py` serves it on http://127.0.0.1:7860 with the bundled model.

Widgets wired to library calls, nothing else: the decision comes from skintriage.inference.predictor / referral, the
card from skintriage.ui.cards, the guidance from skintriage.triage.guidance. Research prototype, not a medical device.

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
from skintriage.common.errors import ArgumentError, SkintriageError
from skintriage.common.paths import DEFAULT_BUNDLE
from skintriage.data.images import IMAGE_SUFFIXES, decode_image
from skintriage.data.taxonomy import DIAGNOSES
from skintriage.inference.predictor import Predictor
from skintriage.triage.acquisition import AUTO, check_request
from skintriage.triage.guidance import load_guidance, render_collapsible_html, render_markdown
from skintriage.triage.referral import SITES, ClinicalContext, illustrative_decision
from skintriage.ui.cards import referral_card_html, saliency_html, threshold_scale_html
from skintriage.ui.examples import DEFAULT_LIST, DemoExample, read_examples

DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent / "shared" / "data"
MAX_EXAMPLES = 12
# the page's fonts: the machine's own (Gradio's default theme fetches a web font, which an offline machine cannot,
# and the browser then mixes a fallback into bold text); DejaVu Sans is Debian's default
FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "DejaVu Sans", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]
THEME = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
SCROLL_TO_CARD = "() => document.getElementById('referral-card')?.scrollIntoView({block: 'start'})"
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
    parser.add_argument(
        "--examples",
        type=Path,
        default=DEFAULT_LIST,
        help="Example gallery: a labelled list (CSV, paths under --data-root) or a folder of images.",
    )
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="Where the list's images live.")
    parser.add_argument("--max-upload-mb", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2, help="Requests processed at once (CPU cores).")
    return parser.parse_args(argv)


def example_gallery(examples: Path, data_root: Path) -> list[tuple[str, str]]:
    """(image path, caption) of each example present: a labelled list, or a folder's images by file name."""
    if examples.is_file():
        listed: list[DemoExample] = read_examples(examples, data_root)
        return [(str(e.path), e.caption) for e in listed[:MAX_EXAMPLES]]
    if examples.is_dir():
        images = sorted(p for p in examples.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(str(p), p.name) for p in images[:MAX_EXAMPLES]]
    return []


SKIN_TYPES = {"not given": None, "fair": True, "not fair": False}  # radio value -> ClinicalContext.fair_skin


def context_from(age: object, site: object, flags: object, skin: object = "not given") -> ClinicalContext:
    """The clinical context from the widgets' raw values, refusing any value outside them in the project's words.

    The widgets hand their values over unchecked (see ``raw_values``), so that a value sent through the API that
    no widget offers (a body site, finding or skin type outside the lists, an age that is not a number) is refused
    here: with this message, nothing of it in the server log, and the upload deleted, as for every other refusal.
    """
    if flags is None:
        flags = []
    if not isinstance(flags, list | tuple) or not all(isinstance(label, str) for label in flags):
        raise ArgumentError(f"findings must be a list of labels; choose from: {', '.join(CONTEXT_FLAGS)}")
    unknown = [label for label in flags if label not in CONTEXT_FLAGS]
    if unknown:
        raise ArgumentError(f"unknown finding {unknown[0]!r}; choose from: {', '.join(CONTEXT_FLAGS)}")
    if not isinstance(skin, str | None) or (skin or "not given") not in SKIN_TYPES:
        raise ArgumentError(f"unknown skin type {skin!r}; choose from: {', '.join(SKIN_TYPES)}")
    if site is not None and not isinstance(site, str):
        raise ArgumentError(f"unknown body site {site!r}; use one of: {', '.join(SITES)}")
    chosen = {CONTEXT_FLAGS[label]: True for label in flags}
    return ClinicalContext(age=years(age), site=site or None, fair_skin=SKIN_TYPES[skin or "not given"], **chosen)


def years(age: object) -> int | float | None:
    """An age as given: empty means not given; a number (or numeric text) of years, else a clear refusal.

    An infinite or NaN age goes to ClinicalContext as it is, which refuses it in words (int() would raise a bare
    OverflowError); out-of-range ages likewise.
    """
    if age is None or (isinstance(age, str) and not age.strip()):
        return None
    if isinstance(age, bool) or not isinstance(age, int | float | str):
        raise ArgumentError(f"age must be a number of years, not {age!r}")
    try:
        value = float(age)
    except ValueError:
        raise ArgumentError(f"age must be a number of years, not {age!r}") from None
    return int(value) if math.isfinite(value) else value


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


def raw_values(*components: gr.components.Component) -> None:
    """Make each component hand the value it receives to the handler unchecked.

    Gradio's own check of a dropdown, radio or checkbox value runs before the handler: a value outside the
    choices, sent through the API, is refused in Gradio's words, printed to the server log with a traceback, and
    the upload of that request stays in the cache. The handler checks these values itself (``context_from``),
    so each such value gets the project's message, stays out of the log, and the upload is deleted.
    (Set on the instance, as in ``unopened``.)
    """
    for component in components:
        component.preprocess = lambda payload: payload


def refusal(message: str) -> gr.Error:
    """A message for the user that is not printed to the server's log (it may quote a file name or the context)."""
    return gr.Error(message, print_exception=False)


def build(predictor: Predictor, examples: list[tuple[str, str]]) -> gr.Blocks:
    kb = load_guidance()
    example_digests = frozenset(digest(path) for path, _ in examples)
    card_path = predictor.bundle.path / "MODEL_CARD.md"
    model_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "No model card in this bundle."

    def triage(
        image_path: str | None,
        age: str | float | None = None,
        site: str | None = None,
        flags: list[str] | None = None,
        photo_type: str | None = AUTO,
        skin: str | None = "not given",
    ):
        """Assess one lesion photo: the referral card, the probabilities, the Grad-CAM overlay, the work-up
        guidance and the card's data as JSON. Every argument but the image is optional."""
        if image_path is None:
            raise refusal("Upload a photograph of the lesion first.")
        try:
            context = context_from(age, site, flags, skin)
            if not isinstance(photo_type, str | None):
                raise ArgumentError(f"unknown photo type {photo_type!r}")
            acquisition = check_request(photo_type or AUTO)
            image = decode_image(image_path, name=Path(image_path).name)
        except (SkintriageError, OSError) as error:  # a bad value or image; OSError: an unreadable upload
            raise refusal(str(error)) from None
        finally:
            discard_upload(image_path, example_digests)
        prediction = predictor.predict(image, context, with_saliency=True, acquisition=acquisition)
        card = referral_card_html(
            prediction.referral,
            malignancy_probability=prediction.malignancy_probability,
            probabilities=prediction.probabilities,
            uncertainty=prediction.uncertainty,
            acquisition=prediction.acquisition,
            validated_on=predictor.policy_for(prediction.acquisition).source,
        )
        label = {DIAGNOSES[c].name: p for c, p in prediction.probabilities.items()}
        guidance = render_collapsible_html(kb, prediction.guidance_topics) if prediction.guidance_topics else ""
        shown = image.copy()  # a screen shows the overlay a few hundred pixels wide: draw it on a capped copy
        shown.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))  # (a 27 MP photo took 9 s to blend and 4 s to encode)
        overlay = saliency_html(
            predictor.overlay(shown, prediction.heatmap),
            note=prediction.saliency_note or "",
            whole_image_analysed=predictor.sees_whole(image.size),
        )
        return card, label, overlay, guidance, prediction.to_dict()

    def explore(malignancy, non_pigmented, out_of_distribution, low_confidence, thresholds, age, site, flags, skin):
        policy = predictor.policies.get(thresholds, predictor.policy)
        try:
            decision = illustrative_decision(
                float(malignancy),
                non_pigmented=non_pigmented,
                out_of_distribution=out_of_distribution,
                low_confidence=low_confidence,
                context=context_from(age, site, flags, skin),
                policy=policy,
            )
        except SkintriageError as error:
            raise refusal(str(error)) from None
        return threshold_scale_html(policy, float(malignancy)), referral_card_html(
            decision, malignancy_probability=float(malignancy)
        )

    def context_inputs():
        with gr.Accordion("Clinical context (optional)", open=True):
            # a text box, not gr.Number: Gradio 6's number box shows "0" when empty, which reads as an age; `years`
            # parses the text (or a number sent through the API) and ClinicalContext refuses an out-of-range age
            age = gr.Textbox(label="Age (years)", value="", placeholder="not given", max_lines=1)
            site = gr.Dropdown(choices=SITES, label="Body site", value=None)
            skin = gr.Radio(choices=list(SKIN_TYPES), value="not given", label="Fair skin (for the U of AEIOU)")
            flags = gr.CheckboxGroup(choices=list(CONTEXT_FLAGS), label="Findings and history")
        raw_values(age, site, skin, flags)
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
                    raw_values(photo_type)
                    age, site, skin, flags = context_inputs()
                    assess = gr.Button("Assess", variant="primary", elem_id="assess")
                    if examples:
                        gr.Examples(
                            examples=[path for path, _ in examples],
                            example_labels=[caption for _, caption in examples],
                            inputs=image,
                            label="Examples: held-out test images, never used to train or calibrate the model",
                        )
                with gr.Column(scale=2):
                    card = gr.HTML(label="Referral card", elem_id="referral-card")
                    with gr.Row():
                        probabilities = gr.Label(
                            label="Calibrated probabilities of the lesion types it knows (no MCC or metastasis class)",
                            num_top_classes=5,
                            show_heading=False,
                            elem_id="probabilities",
                        )
                        overlay = gr.HTML(label="Grad-CAM: what raised the malignancy probability", show_label=True,
                                          container=True, elem_id="saliency")  # fmt: skip
                    guidance = gr.HTML(label="Work-up guidance", elem_id="guidance")
                    with gr.Accordion("Raw output (JSON)", open=False):
                        raw = gr.JSON(label="Card data (JSON)", elem_id="triage-json")
            assess.click(
                triage,
                inputs=[image, age, site, flags, photo_type, skin],
                outputs=[card, probabilities, overlay, guidance, raw],
                api_name="triage",
            ).then(fn=None, js=SCROLL_TO_CARD)  # the decision in view after Assess, also when the form was scrolled
        with gr.Tab("Referral criteria"):
            gr.Markdown(
                "How the referral engine decides, without an image: describe the model's output and the patient, "
                "and see the level and the reasons change. The thresholds are this model's validated ones, per "
                "photo type."
            )
            with gr.Row():
                with gr.Column():
                    kinds = [kind for kind in ("dermoscopic", "clinical") if kind in predictor.policies] or ["pooled"]
                    thresholds = gr.Radio(choices=kinds, value=kinds[0], label="Thresholds of", elem_id="thresholds")
                    # opens on a case where nothing fires: half the referral threshold of the first photo type
                    start = round(predictor.policies.get(kinds[0], predictor.policy).referral_threshold / 2, 2)
                    malignancy = gr.Slider(0, 1, value=start, step=0.01, label="Malignancy probability")
                    scale = gr.HTML(elem_id="threshold-scale")
                    non_pigmented = gr.Checkbox(label="Non-pigmented malignant pattern (SCC-like)")
                    ood = gr.Checkbox(label="Image unlike the training data (out of distribution)")
                    uncertain = gr.Checkbox(label="Prediction too uncertain")
                    e_age, e_site, e_skin, e_flags = context_inputs()
                with gr.Column():
                    criteria_card = gr.HTML(elem_id="criteria-card")
            criteria_inputs = [malignancy, non_pigmented, ood, uncertain, thresholds, e_age, e_site, e_flags, e_skin]
            for widget in criteria_inputs:
                widget.change(explore, inputs=criteria_inputs, outputs=[scale, criteria_card], api_name=False)
            demo.load(explore, inputs=criteria_inputs, outputs=[scale, criteria_card], api_name=False)
        with gr.Tab("Work-up guide"):
            gr.Markdown(render_markdown(kb), elem_id="workup-guide")
        with gr.Tab("About the model"):
            gr.Markdown(model_card, elem_id="model-card")
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    predictor = Predictor.load(args.checkpoint)
    examples = example_gallery(args.examples, args.data_root)
    demo = build(predictor, examples)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        run_history=False,  # gradio 6 would keep each run (inputs, outputs) in the browser, and offers to upload them
        max_file_size=f"{args.max_upload_mb}mb",
        allowed_paths=[path for path, _ in examples] or None,  # the example files, nothing else of the data root
        show_error=False,
        theme=THEME,
    )


if __name__ == "__main__":
    main()
