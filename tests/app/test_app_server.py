"""The demo server keeps no patient data and ships with safe defaults (issue 6).

One app process (the real `app.py`, bundled model) gets a session of triage requests carrying a distinctive
patient file name and clinical context: uploads (JPEG, RGBA PNG), an example, a file that is not an image, an
out-of-range age and an upload over the size limit. Then: nothing derived from an upload is left in Gradio's cache
or in the server's temp folder, the Grad-CAM overlay came inline, and the server's log names no file nor context.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO, SHARED_DATA, write_image
from tests.helpers.app_harness import RunningApp, app_process

ISIC_TEST = SHARED_DATA / "ham10000_isic2018_224" / "images" / "isic2018_test"
PATIENT = "patient_jane_doe_1957"
AGE, SITE = 83, "scalp"
FLAGS = ["Immune suppression", "Known other internal cancer"]
MAX_UPLOAD_MB = 1
# name -> (age, site, findings, photo type, skin type), one bad value each, and the start of the project's message
BAD_VALUES = {
    "bad_site": (AGE, "elbow_pit_of_jane", [], "auto", "not given"),
    "bad_finding": (AGE, SITE, ["itchy_jane_doe"], "auto", "not given"),
    "bad_photo_type": (AGE, SITE, [], "xray_of_jane", "not given"),
    "bad_skin": (AGE, SITE, [], "auto", "olive_jane"),
    "bad_age": ("seventy_jane", SITE, [], "auto", "not given"),
}
BAD_MESSAGES = {
    "bad_site": "unknown body site 'elbow_pit_of_jane'; use one of: ",
    "bad_finding": "unknown finding 'itchy_jane_doe'; choose from: ",
    "bad_photo_type": "acquisition must be one of auto, dermoscopic, clinical, not 'xray_of_jane'",
    "bad_skin": "unknown skin type 'olive_jane'; choose from: ",
    "bad_age": "age must be a number of years, not 'seventy_jane'",
}
DATA_URI = re.compile(r'<img src="data:image/webp;base64,([A-Za-z0-9+/=]+)"')


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@dataclass
class Session:
    app: RunningApp
    cache: Path  # the server's GRADIO_TEMP_DIR
    uploads: dict[str, Path]  # what the patient's photos were, by role
    example: Path
    results: dict[str, tuple] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    cache_files: list[Path] = field(default_factory=list)  # left in GRADIO_TEMP_DIR after the requests
    tmp_files: list[Path] = field(default_factory=list)  # left in the server's tempfile.gettempdir()


def patient_files(folder: Path) -> dict[str, Path]:
    """The patient's photo as JPEG and as RGBA PNG, and a 'photo' that is not an image, all named after them."""
    jpeg = folder / f"{PATIENT}.jpg"
    real = sorted(ISIC_TEST.glob("*.jpg"))[:2] if ISIC_TEST.is_dir() else []
    if real:
        shutil.copy(real[1], jpeg)
    else:
        write_image(jpeg, size=(200, 150), seed=7, quality=92)
    png = folder / f"{PATIENT}_scan.png"
    with Image.open(jpeg) as image:
        image.convert("RGBA").save(png)  # not RGB: gr.Image's own preprocessing would have converted it to a copy
    notes = folder / f"{PATIENT}_notes.jpg"
    notes.write_bytes(b"Referral letter for Jane Doe, born 1957: not an image")
    return {"jpeg": jpeg, "png": png, "notes": notes}


def example_file(folder: Path) -> Path:
    folder.mkdir()
    real = sorted(ISIC_TEST.glob("*.jpg"))[:1] if ISIC_TEST.is_dir() else []
    return Path(shutil.copy(real[0], folder)) if real else write_image(folder / "example.jpg", size=(180, 120), seed=3)


def run_session(session: Session) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(session.app.url, verbose=False, download_files=False)
    jpeg, png, notes = (session.uploads[k] for k in ("jpeg", "png", "notes"))
    calls = {
        "jpeg": (jpeg, AGE, SITE, FLAGS),
        "jpeg_again": (jpeg, AGE, SITE, FLAGS[:1]),
        "png": (png, AGE, None, []),
        "example": (session.example, None, None, []),
        "notes": (notes, AGE, SITE, FLAGS),
        "age_150": (jpeg, 150, SITE, []),
        # values no widget offers, sent through the API: each refused in the project's words (test below)
        **{name: (jpeg, *arguments) for name, arguments in BAD_VALUES.items()},
    }
    for name, (path, *arguments) in calls.items():
        try:
            session.results[name] = client.predict(handle_file(str(path)), *arguments, api_name="/triage")
        except AppError as error:
            session.refusals[name] = str(error)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("server")
    cache, tmp, logs = root / "gradio-cache", root / "server-tmp", root / "logs"
    tmp.mkdir()
    example = example_file(root / "examples")
    env = {"GRADIO_TEMP_DIR": str(cache), "TMPDIR": str(tmp)}  # TMPDIR: the server's tempfile.gettempdir()
    args = ["--examples", str(example.parent), "--max-upload-mb", str(MAX_UPLOAD_MB)]
    with app_process(args, cwd=REPO, env=env, log_dir=logs) as app:
        result = Session(app, cache, patient_files(root), example)
        run_session(result)
        result.cache_files, result.tmp_files = files_under(cache), files_under(tmp)
        yield result


def test_triage_results_and_clear_refusals(session: Session):
    assert set(session.results) == {"jpeg", "jpeg_again", "png", "example"}, session.refusals
    for outputs in session.results.values():
        assert outputs[4]["referral"]["level"] in {"routine", "refer", "urgent"}
    assert session.refusals["notes"].startswith(f"{PATIENT}_notes.jpg: ")  # the user's own file name, to them
    assert "image" in session.refusals["notes"]
    assert session.refusals["age_150"] == "age must be between 0 and 120 years, not 150"


def test_values_no_widget_offers_are_refused_in_the_projects_words(session: Session):
    """Through the API, a site, finding, photo type, skin type or age outside the widgets' values: the project's
    message (not Gradio's "Value: ... is not in the list of choices"); the log and the cache are checked below."""
    for name, message in BAD_MESSAGES.items():
        assert session.refusals[name].startswith(message), (name, session.refusals.get(name))
        assert "is not in the list of choices" not in session.refusals[name]


def test_overlay_comes_inline_at_the_photos_size(session: Session):
    for name, photo in (("jpeg", session.uploads["jpeg"]), ("png", session.uploads["png"])):
        overlay = session.results[name][2]
        assert "/gradio_api/file=" not in overlay
        encoded = DATA_URI.match(overlay)
        assert encoded, overlay[:200]
        with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as shown, Image.open(photo) as original:
            assert shown.format == "WEBP" and shown.size == original.size


def test_no_file_derived_from_an_upload_stays_in_the_cache(session: Session):
    """Allowed: the cached copy of the example (Gradio stores files by content; it is not patient data). Nothing
    else: not the uploads, not a converted copy, not an overlay."""
    example = sha256(session.example)
    assert {sha256(p) for p in session.cache_files} <= {example}, [str(p) for p in session.cache_files]
    assert [p.name for p in session.cache_files] in ([], [session.example.name])
    uploads = {sha256(p) for p in session.uploads.values()}
    assert not [p for p in session.cache_files if PATIENT in str(p) or uploads & set(p.parts)]


def test_server_temp_folder_gains_no_file(session: Session):
    assert session.tmp_files == []


def test_upload_over_the_limit_is_refused_with_a_message(session: Session, tmp_path: Path):
    from gradio_client import Client, handle_file

    big = tmp_path / f"{PATIENT}_big.png"
    big.write_bytes(b"\x89PNG" + bytes(MAX_UPLOAD_MB * 1024 * 1024 + 100))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks first
        Client(session.app.url, verbose=False).predict(handle_file(str(big)), None, None, [], api_name="/triage")
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{big.name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + big.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        session.app.url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as refused:  # and the server refuses a client that does not
        opener.open(request, timeout=30)
    assert refused.value.code == 413
    assert (
        refused.value.read().decode() == f"File size exceeded maximum allowed size of {MAX_UPLOAD_MB * 1048576} bytes."
    )
    assert {sha256(p) for p in files_under(session.cache)} <= {sha256(session.example)}  # no partial upload kept


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_server_listens_on_loopback_only(session: Session):
    port = int(session.app.url.rstrip("/").rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::


def test_server_config_has_no_analytics_a_queue_and_the_upload_limit(session: Session):
    import json

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(session.app.url + "config", timeout=30) as response:
        config = json.load(response)
    assert config["analytics_enabled"] is False
    assert config["enable_queue"] is True
    assert config["max_file_size"] == MAX_UPLOAD_MB * 1024 * 1024
    assert config["show_error"] is False
    assert config["run_history"] is False and "runs" not in config["footer_links"]
    log = session.app.log_text()
    assert "gradio.live" not in log and "share=True" in log  # no share link was made


def test_main_launches_with_the_safe_defaults(monkeypatch: pytest.MonkeyPatch):
    """`python app.py` with no option: loopback, no share link, 20 MB uploads, a queue of 64 run 2 at a time."""
    import gradio as gr

    monkeypatch.syspath_prepend(str(REPO))
    import app

    launched: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs, demo=self))
    app.main(["--examples", str(REPO / "no-such-folder")])
    demo = launched.pop("demo")
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert launched["max_file_size"] == "20mb" and launched["show_error"] is False
    assert launched["run_history"] is False  # no copy of the runs kept in the browser
    assert demo.analytics_enabled is False and demo.delete_cache == app.CACHE_SWEEP_S
    assert demo._queue.default_concurrency_limit == 2 and demo._queue.max_size == 64
    assert app.os.environ["GRADIO_ANALYTICS_ENABLED"] in {"False", "0", "false"}


def test_inline_image_html_is_the_image():
    from skintriage.ui.cards import inline_image_html

    image = Image.new("RGB", (37, 23), (200, 30, 40))
    html = inline_image_html(image, alt='heat "map" <b>')
    encoded = DATA_URI.match(html)
    assert encoded and 'alt="heat &quot;map&quot; &lt;b&gt;"' in html and 'width="37" height="23"' in html
    with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as decoded:
        assert decoded.size == (37, 23)
        assert (
            max(abs(a - b) for a, b in zip(decoded.convert("RGB").getpixel((18, 11)), (200, 30, 40), strict=True)) < 12
        )


def test_log_names_no_file_and_no_context(session: Session):
    """Run last: the log then holds every request of the module, the refused ones included."""
    log = session.app.log_text()
    assert "Running on local URL:  http://127.0.0.1:" in log  # the log was captured
    assert PATIENT not in log and "jane" not in log.lower() and "1957" not in log
    assert not re.search(rf"\b({AGE}|150)\b", log), log
    assert "jane" not in log.lower() and "seventy" not in log  # the bad values too
    for value in (SITE, *FLAGS, "/gradio_api/file=", "/gradio_api/upload", "Traceback"):
        assert value.lower() not in log.lower(), value
