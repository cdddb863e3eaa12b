"""The Work-up guide's links in a real browser: Gradio's Markdown sanitiser must keep the anchors they point to.

``render_markdown`` puts an ``<a id="topic-<id>"></a>`` before each topic heading, a table of contents at the top
and links in each "See also". Whether those links work depends on what gr.Markdown's sanitiser keeps (it gives
headings no id of its own with the app's settings), which only a browser shows. The probe app mirrors app.py's
layout without loading a model: a "Triage" tab first, holding the collapsed guidance in a gr.HTML as the triage
page shows it, then a "Work-up guide" tab with gr.Markdown(render_markdown(kb)) at Gradio's default settings.
Skips (fails under CI) without Chromium, as the other browser tests do (tests/helpers/app_harness.py).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from skintriage.triage.guidance import load_guidance, topic_anchor, topics_for_differential
from tests.helpers.app_harness import (
    browser_page,
    chromium_browser,
    open_app,
    page_errors,
    require_chromium,
    running_app,
)

PROBE_APP = textwrap.dedent(
    '''
    """Probe app for tests/app/test_guide_links.py: the guide as app.py shows it, without a model."""

    import argparse

    import gradio as gr

    from skintriage.triage.guidance import load_guidance, render_collapsible_html, render_markdown, topics_for_differential

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    kb = load_guidance()

    with gr.Blocks(title="guide links probe", analytics_enabled=False) as demo:
        with gr.Tab("Triage"):
            gr.HTML(render_collapsible_html(kb, topics_for_differential(["suspected_mcc"])), elem_id="guidance")
        with gr.Tab("Work-up guide"):
            gr.Markdown(render_markdown(kb), elem_id="workup-guide")

    demo.launch(server_name="127.0.0.1", server_port=args.port, share=False)
    '''
)

# How far (px) from the top of the viewport a heading may be after its link was followed.
LANDED_PX = 5


@pytest.fixture(scope="module")
def guide_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_chromium()  # skip before starting a server that no test could use
    folder: Path = tmp_path_factory.mktemp("guide_links")
    (folder / "app.py").write_text(PROBE_APP, encoding="utf-8")
    with running_app([], cwd=folder) as url:
        yield url


@pytest.fixture
def guide_page(guide_url: str):
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, guide_url, ready_elem_id="guidance")
        page.get_by_role("tab", name="Work-up guide").click()
        page.locator("#workup-guide h2").first.wait_for()
        yield page
        assert page_errors(page) == []


def _heading_top(page, title: str) -> float:
    heading = page.locator("#workup-guide h2").filter(has_text=title)
    assert heading.count() == 1, title
    return float(heading.evaluate("h => h.getBoundingClientRect().top"))


def _follow(page, link, title: str, anchor: str) -> None:
    """Click `link` from the top of the page and check the page scrolled until the heading `title` is at the top."""
    page.evaluate("() => window.scrollTo(0, 0)")
    assert _heading_top(page, title) > 500  # far below the viewport's top before the click
    link.click()
    page.wait_for_function(
        "([title, px]) => [...document.querySelectorAll('#workup-guide h2')].some("
        "h => h.textContent.trim() === title && Math.abs(h.getBoundingClientRect().top) <= px)",
        arg=[title, LANDED_PX],
        timeout=5_000,
    )
    assert page.url.endswith(f"#{anchor}")
    assert page.evaluate("() => window.scrollY") > 0
    assert page.get_by_role("tab", name="Work-up guide").get_attribute("aria-selected") == "true"  # same tab


def test_sanitiser_keeps_one_anchor_per_topic_and_every_link_resolves_in_the_guide(guide_page):
    page = guide_page
    kb = load_guidance()
    found = page.evaluate(
        "() => [...document.querySelectorAll('[id^=topic-], #guide-sources')].map("
        "e => [e.id, e.tagName, !!e.closest('#workup-guide')])"
    )
    assert found == [[topic_anchor(t), "A", True] for t in kb.topics] + [["guide-sources", "A", True]]
    # Each anchor sits right before its heading, so landing on it shows the heading first.
    following = page.evaluate(
        "() => [...document.querySelectorAll('#workup-guide a[id]')].map("
        "a => a.parentElement.nextElementSibling.tagName + ' ' + a.parentElement.nextElementSibling.textContent)"
    )
    assert following == [f"H2 {t.title}" for t in kb.topics.values()] + ["H2 Sources"]
    links = page.evaluate(
        "() => [...document.querySelectorAll('#workup-guide a[href]')].map("
        "a => [a.getAttribute('href'), a.getAttribute('target'), a.textContent])"
    )
    assert len(links) == len(kb.topics) + 1 + sum(len(t.related) for t in kb.topics.values())
    ids = {anchor for anchor, _, _ in found}
    for href, target, text in links:
        assert href.startswith("#") and href[1:] in ids, (href, text)
        assert target is None, (href, target)  # not sent to a new tab
    # The collapsed guidance on the triage tab adds no ids that could capture these links.
    assert page.locator("#guidance details").count() == len(topics_for_differential(["suspected_mcc"]))
    assert page.locator("#guidance .guidance").count() == 1 and page.locator("#guidance .guidance [id]").count() == 0


def test_contents_link_scrolls_to_its_topic_heading(guide_page):
    page = guide_page
    kb = load_guidance()
    contents = page.locator("#workup-guide ul").first
    for topic_id in ("nodal_staging", "net_imaging"):
        title = kb.topics[topic_id].title
        _follow(page, contents.get_by_role("link", name=title, exact=True), title, topic_anchor(topic_id))
    _follow(page, contents.get_by_role("link", name="Sources", exact=True), "Sources", "guide-sources")


def test_see_also_link_scrolls_to_the_related_topic(guide_page):
    page = guide_page
    kb = load_guidance()
    # From the last topic back up to one of its related topics, and from an early topic down to another.
    for source_id, related_id in (("management_overview", "mcc_staging"), ("biopsy", "pitfalls")):
        assert related_id in kb.topics[source_id].related
        title = kb.topics[related_id].title
        with_related = [t for t in kb.topics if kb.topics[t].related]  # one "See also" paragraph each, in order
        see_also = page.locator("#workup-guide p", has_text="See also:").nth(with_related.index(source_id))
        link = see_also.get_by_role("link", name=title, exact=True)
        _follow(page, link, title, topic_anchor(related_id))


def test_collapsed_guidance_on_the_triage_tab_opens_a_topic_on_click(guide_url: str):
    kb = load_guidance()
    ids = topics_for_differential(["suspected_mcc"])
    with chromium_browser() as browser, browser_page(browser) as page:
        open_app(page, guide_url, ready_elem_id="guidance")
        details = page.locator("#guidance details")
        assert details.evaluate_all("ds => ds.map(d => [d.dataset.topic, d.open])") == [[t, False] for t in ids]
        first_fact = kb.topics[ids[0]].facts[0].text
        fact = page.locator("#guidance details li").filter(has_text=first_fact).first
        assert not fact.is_visible()  # closed by default
        page.locator("#guidance summary").first.click()
        assert details.first.evaluate("d => d.open") and fact.is_visible()
        assert details.nth(1).evaluate("d => !d.open")
        assert "the Work-up guide tab shows every topic" in page.locator("#guidance").inner_text()
        assert page_errors(page) == []
