"""The app harness end to end, against a throwaway Gradio Blocks app: a subprocess server, gradio_client, headless Chromium.

The probe app has the shapes `app.py` uses (gr.Image type="pil" → gr.JSON, gr.Markdown, gr.Label; queue; max_file_size),
so these tests also pin the gradio DOM and client behaviour the harness relies on.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.helpers import write_image
from tests.helpers.app_harness import (
    browser_page,
    chromium_browser,
    free_port,
    json_value,
    label_value,
    markdown_text,
    open_app,
    page_errors,
    require_chromium,
    running_app,
    toast_texts,
    upload_image,
    wait_for_text,
)

PROBE_APP = textwrap.dedent(
    '''
    """Throwaway probe app for tests/app/test_app_harness.py."""

    import argparse

    import gradio as gr


    def echo(image):
        if image is None:
            raise gr.Error("no image")
        width, height = image.size
        summary = {"width": width, "height": height, "mode": image.mode, "note": "a  b", "nested": {"xs": [0.5, None, True]}}
        return summary, f"Size: **{width}x{height}**", {"wide": 0.7, "tall": 0.3}


    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--title", default="probe")
    args = parser.parse_args()

    with gr.Blocks(title=args.title) as demo:
        image = gr.Image(type="pil", elem_id="upload", label="Image")
        button = gr.Button("Measure", elem_id="go")
        out_json = gr.JSON(elem_id="out-json", label="Summary")
        out_md = gr.Markdown(elem_id="out-md")
        out_label = gr.Label(elem_id="out-label", label="Shape")
        button.click(echo, inputs=image, outputs=[out_json, out_md, out_label], api_name="echo")

    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=args.port, share=False, max_file_size="10mb"
    )
    '''
)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe_app")
    (folder / "app.py").write_text(PROBE_APP, encoding="utf-8")
    write_image(folder / "lesion.png", size=(37, 23), seed=3)
    return folder


@pytest.fixture(scope="module")
def probe_url(probe_dir: Path):
    started = time.monotonic()
    with running_app(["--title", "harness probe"], cwd=probe_dir) as base_url:
        print(f"probe app up in {time.monotonic() - started:.1f} s at {base_url}")
        yield base_url


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_running_app_reports_the_apps_stderr_when_it_dies(tmp_path: Path):
    (tmp_path / "app.py").write_text("import sys\nsys.exit('model file missing: weights.safetensors')\n")
    with pytest.raises(RuntimeError, match="exited with code 1") as caught, running_app([], cwd=tmp_path, timeout_s=30):
        pass
    assert "model file missing: weights.safetensors" in str(caught.value)


def test_running_app_times_out_with_the_apps_output(tmp_path: Path):
    (tmp_path / "app.py").write_text(
        "import sys, time\nprint('loading model', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer") as caught, running_app([], cwd=tmp_path, timeout_s=2):
        pass
    assert "loading model" in str(caught.value)
    assert time.monotonic() - started < 20  # SIGTERM stops the sleeper at once


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({"CI": "true", "SKINTRIAGE_CHROMIUM": "/nonexistent/chromium"}, pytest.fail.Exception),
        ({"CI": "", "SKINTRIAGE_CHROMIUM": "/nonexistent/chromium"}, pytest.skip.Exception),
        ({"CI": "true", "SKINTRIAGE_SKIP_BROWSER": "1"}, pytest.skip.Exception),
    ],
)
def test_missing_browser_fails_under_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch, env, outcome):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(outcome, match=r"SKINTRIAGE_SKIP_BROWSER|no browser"):
        require_chromium()


def test_client_predict_returns_every_output(probe_url: str, probe_dir: Path):
    client = Client(probe_url, verbose=False)
    summary, markdown, label = client.predict(handle_file(str(probe_dir / "lesion.png")), api_name="/echo")
    # gr.JSON comes back as the Python value, gr.Markdown as the source string, gr.Label as label + confidences.
    assert summary == {"width": 37, "height": 23, "mode": "RGB", "note": "a  b", "nested": {"xs": [0.5, None, True]}}
    assert markdown == "Size: **37x23**"
    assert label == {
        "label": "wide",
        "confidences": [{"label": "wide", "confidence": 0.7}, {"label": "tall", "confidence": 0.3}],
    }
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/echo"]
    assert [item["component"] for item in endpoint["returns"]] == ["Json", "Markdown", "Label"]


def test_client_refuses_files_over_max_file_size(probe_url: str, tmp_path: Path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    client = Client(probe_url, verbose=False)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/echo")


def test_client_sees_gr_error_as_app_error(probe_url: str):
    from gradio_client.exceptions import AppError

    client = Client(probe_url, verbose=False)
    with pytest.raises(AppError, match="no image"):
        client.predict(None, api_name="/echo")


def test_browser_upload_click_and_read_outputs(probe_url: str, probe_dir: Path, tmp_path: Path):
    with browser_page() as page:
        open_app(page, probe_url, ready_elem_id="upload")
        assert page.title() == "harness probe"
        upload_image(page, "upload", probe_dir / "lesion.png")
        page.click("#go")
        assert "37x23" in wait_for_text(page, "out-md", "Size: 37x23")
        assert markdown_text(page, "out-md") == "Size: 37x23"
        assert json_value(page, "out-json") == {
            "width": 37,
            "height": 23,
            "mode": "RGB",
            "note": "a  b",
            "nested": {"xs": [0.5, None, True]},
        }
        assert label_value(page, "out-label") == ("wide", {"wide": "70%", "tall": "30%"})
        shot = tmp_path / "probe.png"
        page.screenshot(path=str(shot), full_page=True)
        assert page_errors(page) == []
    assert shot.stat().st_size > 1000
    with Image.open(shot) as picture:
        assert picture.format == "PNG"
        assert picture.width == 1400 and picture.height >= 1000


def test_browser_shows_errors_as_toasts(probe_url: str, tmp_path: Path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, probe_url, ready_elem_id="upload")
        page.click("#go")  # no image: the handler raises gr.Error
        page.wait_for_selector("[data-testid=toast-text]")
        assert toast_texts(page) == ["no image"]
        page.locator("#upload input[type=file]").set_input_files(str(big))
        page.wait_for_function("() => document.querySelectorAll('[data-testid=toast-text]').length >= 2")
        assert any("exceed the maximum allowed size" in text for text in toast_texts(page))
