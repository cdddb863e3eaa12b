"""The demo (app.py) as users meet it: started as a process on the bundled model, called through
gradio_client, and driven in headless Chromium. Screenshots go to tmp_path, and also to
$SKINTRIAGE_SCREENSHOTS when set (that is how docs/ screenshots are regenerated)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from html import escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, SHARED_DATA
from tests.helpers.app_harness import (
    browser_page,
    chromium_browser,
    json_value,
    label_value,
    open_app,
    require_chromium,
    running_app,
    upload_image,
    wait_for_text,
)

ISIC_TEST = SHARED_DATA / "ham10000_isic2018_224" / "images" / "isic2018_test"
MELANOMA = "ISIC_0034548.jpg"  # ground truth mel in the official test labels, not in the demo's example gallery
NAEVUS = "ISIC_0034524.jpg"  # ground truth nv; the example gallery's image (uploads differ from it)


def lesion_photo(path: Path) -> Path:
    """A brown blob on skin tone: a stand-in lesion when the real test images are absent."""
    yy, xx = np.mgrid[0:240, 0:320]
    inside = ((yy - 120) / 70) ** 2 + ((xx - 160) / 90) ** 2 < 1
    rgb = np.where(inside[..., None], [110, 70, 50], [225, 180, 160]).astype(np.uint8)
    noise = np.random.default_rng(0).integers(-12, 12, rgb.shape)
    Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def app_session(tmp_path_factory):
    """(base_url, upload cache folder, examples folder, a real or stand-in lesion image)."""
    root = tmp_path_factory.mktemp("app")
    examples = root / "examples"
    examples.mkdir()
    if (ISIC_TEST / MELANOMA).is_file():
        image = shutil.copy(ISIC_TEST / MELANOMA, root / MELANOMA)
        shutil.copy(ISIC_TEST / NAEVUS, examples / NAEVUS)
    else:
        image = lesion_photo(root / "lesion.jpg")
        Image.open(image).rotate(90, expand=True).save(examples / "example.jpg")
    cache = root / "gradio-cache"
    # with the shared data: the demo's own labelled gallery (clinical and dermoscopic test images); without: a folder
    gallery = [] if ISIC_TEST.is_dir() else ["--examples", str(examples)]
    with running_app(gallery, cwd=REPO, env={"GRADIO_TEMP_DIR": str(cache)}) as url:
        yield url, cache, examples, Path(image)


@pytest.fixture(scope="module")
def clinical_photo(tmp_path_factory) -> Path:
    """A clinical (camera) photo: a DermNet held-out test image from the demo's example list, else a stand-in."""
    from skintriage.ui.examples import DEFAULT_LIST, read_examples

    clinical = [e.path for e in read_examples(DEFAULT_LIST, SHARED_DATA) if e.acquisition == "clinical"]
    if clinical:
        return Path(shutil.copy(clinical[0], tmp_path_factory.mktemp("clinical") / "clinical_photo.jpg"))
    return lesion_photo(tmp_path_factory.mktemp("clinical") / "clinical_photo.jpg")  # 320x240: landscape


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SKINTRIAGE_SCREENSHOTS"):
        target = Path(os.environ["SKINTRIAGE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    assert path.stat().st_size > 10_000
    with Image.open(path) as shot:
        assert shot.width == 1400
    return path


def test_triage_api_returns_the_referral_card_and_guidance(app_session):
    from gradio_client import Client, handle_file

    url, cache, _, image = app_session
    client = Client(url, verbose=False)
    card, label, overlay, guidance, raw = client.predict(
        handle_file(str(image)),
        72,
        "face",
        ["Asymptomatic (not tender)", "Expanding rapidly (within 3 months)"],
        api_name="/triage",
    )
    # the card's data: level, reasons, differential, limits, disclaimer
    assert raw["referral"]["level"] in {"urgent", "refer", "routine"}
    assert "aeiou_features" in raw["referral"]["rules"]  # 4 AEIOU features given: age 72, face, A, E
    assert any("AEIOU" in reason for reason in raw["referral"]["reasons"])
    assert raw["referral"]["level"] == "urgent"  # rapid growth with A, O, U: clinically suspected MCC
    assert "mcc" in [entry["condition"] for entry in raw["differential"]]
    assert any("never seen Merkel cell carcinoma" in limit for limit in raw["limits"])
    assert "not a medical device" in raw["disclaimer"]
    assert abs(sum(raw["probabilities"].values()) - 1) < 1e-6
    assert isinstance(raw["uncertainty"], float)
    # the same decision rendered, the guidance for an MCC differential, the saliency overlay
    assert f'data-level="{raw["referral"]["level"]}"' in card
    assert "not a medical device" in card
    assert "Immunohistochemistry" in guidance and "CK20" in guidance and 'class="guidance-sources"' in guidance
    assert guidance.count("<details") >= 4 and "<details open" not in guidance  # the topics, collapsed
    assert label["label"] and len(label["confidences"]) == 5
    assert raw["saliency"].startswith("Grad-CAM") and escape(raw["saliency"]) in overlay  # note under the overlay
    assert raw["triage_probabilities"]["mcc"] is None and raw["triage_probabilities"]["cutaneous_metastasis"] is None
    assert "no class for them" in raw["triage_probabilities_note"]
    # the overlay comes inside the HTML (a data: URI), never as a file in the server's cache
    encoded = re.match(r'<img src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', overlay)
    assert encoded, overlay[:200]
    with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as shown, Image.open(image) as original:
        assert shown.size == original.size
    # the upload is gone from the server's upload cache once read
    assert not [p for p in cache.rglob(image.name)], "the uploaded image was left in the upload cache"


def test_triage_api_needs_only_the_image_as_the_readme_shows(app_session):
    from gradio_client import Client, handle_file

    url, _, _, image = app_session
    client = Client(url, verbose=False)
    *_, raw = client.predict(handle_file(str(image)), api_name="/triage")  # the README's call, as written
    assert raw["referral"]["level"] in {"urgent", "refer", "routine"} and raw["acquisition"]["chosen_by"] == "model"
    named = client.predict(
        image_path=handle_file(str(image)),
        age=80,
        site="scalp",
        flags=["New or enlarging nodule", "Immune suppression"],
        photo_type="clinical",
        skin="fair",
        api_name="/triage",
    )
    assert "aeiou_features" in named[-1]["referral"]["rules"]  # new nodule, I, O, U on fair skin
    assert named[-1]["acquisition"]["kind"] == "clinical"
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/triage"]
    assert [p["parameter_has_default"] for p in info["parameters"]] == [False, True, True, True, True, True]
    labels = [r["label"] for r in info["returns"]]
    assert labels[0] == "Referral card" and labels[-1] == "Card data (JSON)"
    assert not [label for label in labels if label.startswith("value_")]


def test_the_readmes_gradio_client_snippet_runs_as_written(app_session, capsys):
    url, _, _, image = app_session
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"The named endpoint `/triage`.*?```python\n(.*?)```", readme, re.S).group(1)
    exec(snippet.replace("http://127.0.0.1:7860/", url).replace('"photo.jpg"', repr(str(image))), {})
    level = capsys.readouterr().out.splitlines()[-1].split()[0]  # (the client first prints "Loaded as API")
    assert level in {"urgent", "refer", "routine"}


def test_triage_api_takes_an_optional_photo_type_and_the_card_shows_it(app_session):
    from gradio_client import Client, handle_file

    url, _, _, image = app_session
    client = Client(url, verbose=False)
    card, *_, raw = client.predict(handle_file(str(image)), None, None, [], api_name="/triage")  # default: auto
    used = raw["acquisition"]  # the bundled model's acquisition classifier reads the type from the image
    assert used["chosen_by"] == "model" and used["kind"] in ("dermoscopic", "clinical")
    assert used["kind"] in card
    card, *_, raw = client.predict(handle_file(str(image)), None, None, [], "clinical", api_name="/triage")
    assert (raw["acquisition"]["kind"], raw["acquisition"]["chosen_by"]) == ("clinical", "user")
    assert "clinical" in card


def test_triage_api_refuses_a_missing_image_with_a_message(app_session):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app_session[0], verbose=False)
    with pytest.raises(AppError, match="Upload a photograph"):
        client.predict(None, None, None, [], api_name="/triage")


def in_viewport(page, selector: str) -> bool:
    return page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }"
    )


@pytest.mark.parametrize("kind", ["dermoscopic", "clinical"])
def test_browser_triage_shows_one_decision_in_view(app_session, clinical_photo, tmp_path, kind):
    require_chromium()
    url, _, _, dermoscopic = app_session
    image = dermoscopic if kind == "dermoscopic" else clinical_photo
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, url, ready_elem_id="upload")
        age = page.get_by_label("Age (years)").first
        assert age.input_value() == ""  # empty, not "0": an empty box must not read as an age
        if ISIC_TEST.is_dir():  # the labelled gallery: both photo types, each with its diagnosis
            gallery = page.get_by_text("Examples: held-out test images").locator("xpath=../..").inner_text()
            assert "Clinical photo: Basal cell carcinoma" in gallery and "Dermoscopic image: Melanoma" in gallery
        upload_image(page, "upload", image)
        page.get_by_label("Asymptomatic (not tender)").first.check()
        page.get_by_label("New or enlarging nodule").first.check()
        page.locator("#assess").scroll_into_view_if_needed()
        page.click("#assess")
        card = wait_for_text(page, "referral-card", "Why this level", timeout_ms=60_000)
        level = page.locator("#referral-card [data-testid=referral-level]")
        assert level.inner_text() in {"URGENT REFERRAL", "REFER", "ROUTINE REVIEW"}
        # the decision is in view after Assess, although the button sits below the form
        page.wait_for_function(
            "() => { const r = document.querySelector('#referral-card [data-testid=referral-level]')"
            ".getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }",
            timeout=10_000,
        )
        assert in_viewport(page, "#referral-card [data-testid=referral-level]")
        assert "How far to trust this answer" in card and "held out for validation" in card
        assert "not a medical device" in card and "adjusted for class frequency" not in card
        headline, shown = label_value(page, "probabilities")
        assert headline is None and len(shown) == 5  # one headline on the page: the card's level
        overlay = page.locator("#saliency img")
        overlay.wait_for()
        assert overlay.get_attribute("src").startswith("data:image/webp;base64,")
        assert overlay.evaluate("img => img.complete && img.naturalWidth > 0")
        legend = page.locator("#saliency .saliency-legend").inner_text()
        assert "raised the malignancy probability" in legend
        with Image.open(image) as photo:
            assert ("Faded: outside the central square" in legend) == (photo.width != photo.height)
        topics = page.locator("#guidance details")
        assert topics.count() >= 1 and page.locator("#guidance details[open]").count() == 0  # collapsed
        page.get_by_text("Raw output (JSON)").click()
        page.locator("#triage-json .json-holder").wait_for()
        raw = json_value(page, "triage-json")
        assert raw["referral"]["level"] in level.inner_text().lower()
        assert raw["referral"]["reasons"][0] in card
        page.locator("#referral-card").scroll_into_view_if_needed()
        save_screenshot(page, tmp_path, f"demo_triage_{kind}.png")


def test_browser_referral_criteria_tab_reacts_to_context(app_session, tmp_path):
    require_chromium()
    url = app_session[0]
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, url, ready_elem_id="upload")
        page.get_by_role("tab", name="Referral criteria").click()
        wait_for_text(page, "criteria-card", "ROUTINE REVIEW")  # half the threshold, no context: nothing fires
        assert page.get_by_label("Age (years)").last.input_value() == ""  # the criteria tab's own box, empty too
        scale = page.locator("#threshold-scale .threshold-scale")
        assert float(scale.get_attribute("data-referral")) < float(scale.get_attribute("data-urgent"))
        assert "refer from" in scale.inner_text()
        page.get_by_label("clinical").last.check()  # the clinical thresholds: the marks move
        page.wait_for_function(
            "() => document.querySelector('#threshold-scale').innerText.startsWith('clinical thresholds')"
        )
        page.get_by_label("Previous Merkel cell carcinoma").last.check()  # the criteria tab's own checkbox
        text = wait_for_text(page, "criteria-card", "URGENT REFERRAL")
        assert "recurrence" in text
        save_screenshot(page, tmp_path, "demo_referral_criteria.png")


def test_browser_workup_guide_and_model_card_tabs(app_session, tmp_path):
    require_chromium()
    url = app_session[0]
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, url, ready_elem_id="upload")
        page.get_by_role("tab", name="Work-up guide").click()
        guide = wait_for_text(page, "workup-guide", "Sources")
        for topic in ("AEIOU", "Immunohistochemistry", "Ki-67", "5-HIAA", "DOTATATE"):
            assert topic in guide
        save_screenshot(page, tmp_path, "demo_workup_guide.png")
        page.get_by_role("tab", name="About the model").click()
        card = wait_for_text(page, "model-card", "Merkel")
        assert "About the model: EfficientNet-Lite0 (ImageNet-pretrained" in card  # a title a person reads
        assert "isic2018_test" in card and "balanced accuracy" in card
        save_screenshot(page, tmp_path, "demo_model_card.png")
