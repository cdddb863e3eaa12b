"""Drive a Gradio app as a person and as an API client would: start `app.py` on a free port, open it in headless Chromium.

Import as `from tests.helpers.app_harness import ...`.

- `running_app([...], cwd=...)` starts `python app.py --port PORT ...` and yields its base URL once it answers HTTP 200;
  use `gradio_client.Client(base_url)` on it for API calls. `app_process(...)`, same arguments, yields a `RunningApp`
  instead: the URL plus the server's process id (for its memory) and its stdout/stderr log files (for what it prints).
- `browser_page()` opens a Playwright page in the system's Chromium (Debian's `chromium` package: Playwright's own
  browser download is not reachable from the project's machines). Without a browser it skips the test locally and
  fails it under CI (`CI=true`), unless `SKINTRIAGE_SKIP_BROWSER=1` is set, which skips browser tests everywhere.
- `upload_image`, `wait_for_text`, `markdown_text`, `json_value`, `label_value`, `toast_texts` know the DOM of
  gradio 6 (checked against 6.31) for `gr.Image`, `gr.Markdown`, `gr.JSON`, `gr.Label` and error toasts, each found by
  the component's `elem_id`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Debian's /usr/bin/chromium is a shell wrapper that adds desktop flags (extensions, GPU rasterization) and prints a
# shell warning on some machines; the binary it runs is this one.
DEBIAN_CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
# --no-sandbox: Chromium's sandbox refuses to run as root (CI here runs as root); Playwright adds it by default
# too (chromium_sandbox=False), it is kept explicit so the launch is the same outside Playwright.
# --disable-dev-shm-usage: small /dev/shm in containers crashes the renderer. --disable-gpu: no GPU, no GL.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
VIEWPORT = {"width": 1400, "height": 1000}
DEFAULT_TIMEOUT_MS = 30_000
_TRUE = {"1", "true", "yes", "on"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _http_status(url: str, timeout_s: float = 2.0) -> int | None:
    # No proxy for the loopback address, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the app's process group, then SIGKILL it after `grace_s` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


@dataclass(frozen=True)
class RunningApp:
    """An app started by `app_process`: its base URL, the server's process id and where its output goes."""

    url: str
    pid: int
    stdout_path: Path
    stderr_path: Path

    def log_text(self) -> str:
        """Everything the app printed so far, stdout then stderr."""
        return "".join(
            path.read_text(encoding="utf-8", errors="replace") for path in (self.stdout_path, self.stderr_path)
        )


@contextlib.contextmanager
def running_app(
    args: Sequence[str] = (),
    *,
    cwd: str | os.PathLike[str],
    timeout_s: float = 120.0,
    script: str = "app.py",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start `python script --port PORT *args` in `cwd`, yield `http://127.0.0.1:PORT/` once GET returns 200, stop it.

    The app runs in its own process group with `GRADIO_ANALYTICS_ENABLED=False`, no proxy for the loopback address and
    its own `GRADIO_TEMP_DIR` (uploads land there; removed afterwards); `env` adds or overrides variables. If the app
    exits or does not answer within `timeout_s`, or the body raises, the error carries the app's stderr tail.
    """
    with app_process(args, cwd=cwd, timeout_s=timeout_s, script=script, port=port, env=env) as app:
        yield app.url


@contextlib.contextmanager
def app_process(
    args: Sequence[str] = (),
    *,
    cwd: str | os.PathLike[str],
    timeout_s: float = 120.0,
    script: str = "app.py",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> Iterator[RunningApp]:
    """`running_app`, yielding a `RunningApp`: `pid` is the server process itself (`python script`, no shell).

    The app's output goes to `stdout.log` and `stderr.log` in `log_dir` when given (kept after the app stops, to read
    everything it printed, shutdown included), else in the scratch folder removed afterwards.
    """
    port = free_port() if port is None else port
    base_url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="skintriage-app-") as scratch:
        scratch_dir = Path(scratch)
        log_folder = scratch_dir if log_dir is None else Path(log_dir)
        log_folder.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        child_env.update(
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_TEMP_DIR=str(scratch_dir / "gradio"),
            PYTHONUNBUFFERED="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        child_env.update(env or {})
        stdout_path, stderr_path = log_folder / "stdout.log", log_folder / "stderr.log"
        command = [sys.executable, script, "--port", str(port), *args]
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

        def report(what: str) -> str:
            return (
                f"{what}\ncommand: {' '.join(command)} (cwd {cwd})\n"
                f"--- app stderr (tail) ---\n{_tail(stderr_path)}\n--- app stdout (tail) ---\n{_tail(stdout_path, 1500)}"
            )

        try:
            deadline = time.monotonic() + timeout_s
            while True:
                code = process.poll()
                if code is not None:
                    raise RuntimeError(report(f"the app exited with code {code} before answering on {base_url}"))
                if _http_status(base_url) == 200:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(report(f"the app did not answer HTTP 200 on {base_url} within {timeout_s:g} s"))
                time.sleep(0.25)
            try:
                yield RunningApp(base_url, process.pid, stdout_path, stderr_path)
            except Exception as error:
                error.add_note(report("while the app was running"))
                raise
        finally:
            _stop(process)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def chromium_path() -> str | None:
    """The Chromium to drive: `$SKINTRIAGE_CHROMIUM`, else the first of `CHROMIUM_NAMES` on PATH, else None.

    Debian's `/usr/bin/chromium` wrapper script is replaced by the binary it runs.
    """
    override = os.environ.get("SKINTRIAGE_CHROMIUM", "").strip()
    if override:
        return shutil.which(override)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is None:
            continue
        if name == "chromium" and DEBIAN_CHROMIUM_BINARY.is_file() and os.access(DEBIAN_CHROMIUM_BINARY, os.X_OK):
            return str(DEBIAN_CHROMIUM_BINARY)
        return found
    return None


def _no_browser(why: str) -> NoReturn:
    """Fail under CI (browser tests are required there), skip elsewhere."""
    if _truthy("CI"):
        pytest.fail(
            f"browser test cannot run under CI: {why}. .ci/run installs Debian's `chromium`; set "
            "SKINTRIAGE_SKIP_BROWSER=1 to skip browser tests deliberately.",
            pytrace=False,
        )
    pytest.skip(f"no browser: {why} (install Debian's `chromium`, or point SKINTRIAGE_CHROMIUM at one)")


def require_chromium() -> str:
    """The Chromium executable, or skip (locally) / fail (CI) the test; skip always with SKINTRIAGE_SKIP_BROWSER=1."""
    if _truthy("SKINTRIAGE_SKIP_BROWSER"):
        pytest.skip("browser tests skipped: SKINTRIAGE_SKIP_BROWSER is set")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _no_browser("the `playwright` Python package is not installed (it is in the `dev` extra)")
    path = chromium_path()
    if path is None:
        where = os.environ.get("SKINTRIAGE_CHROMIUM") or " / ".join(CHROMIUM_NAMES)
        _no_browser(f"no Chromium found ({where} not on PATH)")
    return path


@contextlib.contextmanager
def chromium_browser(*, headless: bool = True) -> Iterator[Browser]:
    """Playwright's Chromium on the system's browser (see `require_chromium` for the skip/fail policy)."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=headless, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_page(
    browser: Browser | None = None,
    *,
    viewport: Mapping[str, int] | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> Iterator[Page]:
    """A fresh page (own context, 1400×1000 viewport) in `browser`, or in a Chromium launched for it alone.

    The page's default timeout is `timeout_ms`; JavaScript errors thrown in the page are collected in
    `page_errors(page)`.
    """
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(chromium_browser())
        context = browser.new_context(viewport=dict(viewport or VIEWPORT))
        stack.callback(context.close)
        context.set_default_timeout(timeout_ms)
        page = context.new_page()
        errors: list[str] = []
        _PAGE_ERRORS[id(page)] = errors
        stack.callback(_PAGE_ERRORS.pop, id(page), None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page


_PAGE_ERRORS: dict[int, list[str]] = {}


def page_errors(page: Page) -> list[str]:
    """Uncaught JavaScript errors the page threw so far (pages from `browser_page` only)."""
    return list(_PAGE_ERRORS.get(id(page), []))


def open_app(page: Page, base_url: str, *, ready_elem_id: str | None = None) -> None:
    """Load the Gradio app and wait until it has rendered (the element `ready_elem_id`, else any component)."""
    page.goto(base_url)
    page.wait_for_selector(f"#{ready_elem_id}" if ready_elem_id else ".gradio-container .block")


def upload_image(
    page: Page, elem_id: str, path: str | os.PathLike[str], *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> None:
    """Upload a file into the `gr.Image` with `elem_id` and wait until its preview shows the uploaded file.

    gradio 6: the component's root has id=elem_id and holds a hidden `<input type="file" data-testid="file-upload">`;
    Playwright sets files on it although hidden. Once uploaded, the preview `<img>`'s src is
    `.../gradio_api/file=<temp dir>/<file name>`.
    """
    path = Path(path)
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        """([id, name]) => [...document.querySelectorAll(`#${id} img`)].some(
            img => decodeURIComponent(img.src).endsWith('/' + name) && img.complete && img.naturalWidth > 0)""",
        arg=[elem_id, path.name],
        timeout=timeout_ms,
    )


def wait_for_text(
    page: Page,
    elem_id: str,
    expected: str | re.Pattern[str],
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> str:
    """Wait until the element with `elem_id` contains `expected` (a substring, or a regex searched in its text).

    Returns the element's visible text then (`inner_text`, which includes the component's label if it shows one).
    """
    from playwright.sync_api import expect

    locator = page.locator(f"#{elem_id}")
    expect(locator).to_contain_text(expected, timeout=timeout_ms)
    return locator.inner_text()


def markdown_text(page: Page, elem_id: str) -> str:
    """The rendered text of the `gr.Markdown` with `elem_id` (markup gone: `**37x23**` reads `37x23`)."""
    return page.locator(f"#{elem_id} [data-testid=markdown]").inner_text()


def json_value(page: Page, elem_id: str) -> Any:
    """The value shown by the `gr.JSON` with `elem_id`, parsed back.

    gradio renders one node per token inside `.json-holder` (line numbers and fold arrows are CSS pseudo-content), so
    its text content is the JSON with extra whitespace between tokens. Only for values shown fully expanded.
    """
    return json.loads(page.locator(f"#{elem_id} .json-holder").text_content() or "null")


def label_value(page: Page, elem_id: str) -> tuple[str | None, dict[str, str]]:
    """The `gr.Label` with `elem_id`: its headline class (None when it shows none: `show_heading=False`) and the
    confidence shown for each class, e.g. `'70%'`."""
    root = page.locator(f"#{elem_id}")
    root.locator(".confidence-set").first.wait_for()
    heading = root.locator("[data-testid=label-output-value]")
    headline = heading.inner_text() if heading.count() else None
    rows = root.locator(".confidence-set").evaluate_all(
        "sets => sets.map(s => [s.querySelector('dt').innerText, s.querySelector('dd').innerText])"
    )
    return headline, {str(name): str(shown) for name, shown in rows}


def toast_texts(page: Page) -> list[str]:
    """The messages of the toasts shown now (`gr.Error`, `gr.Warning`, `gr.Info`, upload-size refusals)."""
    return page.locator("[data-testid=toast-text]").all_inner_texts()
