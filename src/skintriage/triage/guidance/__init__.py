"""Work-up guidance for lesions flagged as possible MCC or cutaneous metastasis: structured, cited data.

The guidance panel is shown to dermatologists, so every statement it makes must be traceable. The
knowledge base is therefore kept as data, not prose in code:

* ``sources.yaml`` lists every citable source. A ``document`` source is one of the copies of public
  web pages in ``../shared/documents`` (named by file, title and publisher); a ``literature`` source is
  a publication named in the project's clinically reviewed fact sheet ``../shared/clinical_facts.md``
  (``via: clinical_facts.md``), with ``reference`` exactly as far as the fact sheet gives it (and the
  PMID where it gives one). Statements the fact sheet makes without naming a publication cite a
  ``CF-...`` entry that says so. Consumer or AI-generated pages carry a ``reliability_note``.
  ``file`` and ``via`` are provenance for tests and audits only: what a clinician sees is the source's
  ``cite`` name as the citation marker (``Source.cite``: "Heath et al., J Am Acad Dermatol 2008",
  "Clinical review 2026 (fact sheet): biopsy"; never an id such as ``CF-biopsy``) and, in the source
  list, its ``label``: publisher and title for a page, the reference (+ PMID) for literature, never a
  file name.
* ``topics/NN_<id>.yaml`` holds one topic each, read in file-name order (the display order). A topic
  has a one- or two-sentence ``audience_summary``, ``facts`` (each with ``citations``), optional
  ``tables`` (each row with ``citations``) and ``related`` topic ids.
* ``DIFFERENTIAL_TOPICS`` maps each work-up pathway that the referral engine emits for a differential
  entry (``skintriage.triage.referral.WORKUPS``, plus ``benign``) to the topics shown for it.

Two renderers share one view of each topic (``_view``): ``render_markdown`` for the Work-up guide (with a
table of contents, an anchor per topic and linked "See also" entries when it renders the whole guide) and
``render_collapsible_html`` for the triage result (one closed ``<details>`` per topic, escaped HTML).

The text is the project's own wording: facts and figures come from the sources with a citation, their
sentences do not (``tests/triage/test_guidance.py`` checks for copied word runs, and that every number quoted
appears in the fact sheet or in a cited page). Where sources disagree the fact says so, and advice found
only on a weak source (the AI-generated Dr.Oracle page, consumer pages) is reported as what that page
says, not as a recommendation. Loading validates the data against the schema of ``schema.py`` (pydantic
models of both files) and fails loudly, naming the file and the field, because a silently dropped citation
would turn a sourced statement into an unsourced one.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from skintriage.triage.guidance.schema import (
    GUIDANCE_DIR,
    Fact,
    GuidanceError,
    KnowledgeBase,
    Source,
    Table,
    TableRow,
    Topic,
    load_guidance,
    topic_ids,
)

__all__ = [
    "DIFFERENTIAL_TOPICS",
    "FULL_GUIDE",
    "GUIDANCE_DIR",
    "NOTE",
    "SOURCES_ANCHOR",
    "Fact",
    "GuidanceError",
    "KnowledgeBase",
    "Source",
    "Table",
    "TableRow",
    "Topic",
    "load_guidance",
    "render_collapsible_html",
    "render_markdown",
    "to_json",
    "topic_anchor",
    "topic_ids",
    "topics_for_differential",
]

NOTE = (
    "Educational guidance summarised from the cited sources, not clinical advice: the clinician's judgement "
    "and local guidelines take precedence."
)

# Which topics the app shows for each work-up pathway of a lesion's differential (one pathway per
# differential entry, as skintriage.triage.referral emits them). Order matters: it is the display order. The
# neuroendocrine tests (biochemistry, somatostatin-receptor imaging) and NET grading appear only for a
# known or suspected neuroendocrine tumour; "benign" shows no work-up guidance, but is accepted so that
# any triage outcome can be passed.
_METASTASIS = ("biopsy", "metastasis_workup", "cutaneous_metastasis")
DIFFERENTIAL_TOPICS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "suspected_mcc": (
            "aeiou",
            "mcc_epidemiology",
            "biopsy",
            "mcc_biopsy_and_referral",
            "immunohistochemistry",
            "mcc_staging",
            "nodal_staging",
            "pitfalls",
        ),
        "mcc_recurrence": ("mcc_recurrence", "biopsy", "immunohistochemistry", "pitfalls"),
        "metastasis": _METASTASIS,
        "neuroendocrine_metastasis": (
            *_METASTASIS,
            "immunohistochemistry",
            "pitfalls",
            "grading",
            "biochemistry",
            "net_imaging",
            "skin_signs_of_net",
        ),
        "other_malignant": ("biopsy",),
        "cannot_assess": ("biopsy",),
        "benign": (),
    }
)

# --------------------------------------------------------------------------------------------------
# Selection and rendering
# --------------------------------------------------------------------------------------------------


def _select(kb: KnowledgeBase, topics: Sequence[str] | None) -> list[Topic]:
    if topics is None:
        return list(kb.topics.values())
    if isinstance(topics, str):
        topics = [topics]
    unknown = [t for t in topics if t not in kb.topics]
    if unknown:
        raise GuidanceError(f"unknown guidance topic(s) {unknown}; valid topic ids: {', '.join(kb.topics)}")
    return [kb.topics[t] for t in dict.fromkeys(topics)]


def topics_for_differential(workups: Iterable[str]) -> list[str]:
    """The topic ids to show for a lesion's differential, in display order without duplicates.

    ``workups`` holds the work-up pathway key of each differential entry (``suspected_mcc``,
    ``mcc_recurrence``, ``metastasis``, ``neuroendocrine_metastasis``, ``other_malignant``,
    ``cannot_assess`` or ``benign``; a single key may be passed as a string). Kept as data
    (``DIFFERENTIAL_TOPICS``) so the clinical choice of what to show is reviewable in one place; an
    unknown key is an error rather than silently showing nothing.
    """
    if isinstance(workups, str):
        workups = [workups]
    chosen: dict[str, None] = {}
    for entry in workups:
        key = str(entry).strip().lower()
        if key not in DIFFERENTIAL_TOPICS:
            raise GuidanceError(f"unknown work-up pathway {entry!r}; valid pathways: {', '.join(DIFFERENTIAL_TOPICS)}")
        chosen.update(dict.fromkeys(DIFFERENTIAL_TOPICS[key]))
    known = load_guidance().topics
    missing = [t for t in chosen if t not in known]
    if missing:  # a data error in this module, not the caller's
        raise GuidanceError(f"DIFFERENTIAL_TOPICS names topics that do not exist: {missing}")
    return list(chosen)


def topic_anchor(topic_id: str) -> str:
    """The HTML id of a topic's heading in the linked guide: ``topic-<id>``.

    Derived from the topic id (not the title), so table-of-contents and "See also" links survive edits to a
    title. The prefix keeps it clear of the app's own element ids (``elem_id`` such as ``guidance``). An
    explicit ``<a id>`` because gr.Markdown (Gradio 6.31, default settings) gives headings no id of their own
    but keeps the ``id`` of raw ``<a>`` elements (checked in Chromium by ``tests/app/test_guide_links.py``).
    """
    return f"topic-{topic_id}"


# The id of the Sources heading in the linked guide (its table of contents ends with a link to it).
SOURCES_ANCHOR = "guide-sources"
# Where the triage page's collapsed guidance points the reader for the rest of the guide (the app's tab name).
FULL_GUIDE = "the Work-up guide tab"


@dataclass(frozen=True)
class _TopicView:
    """One topic as both renderers show it: plain text, citation markers resolved, related topics looked up.

    Built once by ``_view`` so that what is shown (and in which order) is decided in one place; the Markdown and
    HTML renderers only add markup (and escaping).
    """

    topic: Topic
    facts: tuple[tuple[str, str], ...]  # (text, markers)
    tables: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]], ...]  # (title, columns, rows)
    related: tuple[Topic, ...]


def _markers(kb: KnowledgeBase, citations: Iterable[str]) -> str:
    """The citation markers after a statement: each source's clinician-facing name in brackets."""
    return " ".join(f"[{kb.sources[c].cite}]" for c in citations)


def _view(kb: KnowledgeBase, topic: Topic) -> _TopicView:
    tables = tuple(
        (
            table.title,
            (*table.columns, "Sources"),
            tuple((*row.cells, _markers(kb, row.citations)) for row in table.rows),
        )
        for table in topic.tables
    )
    return _TopicView(
        topic=topic,
        facts=tuple((fact.text, _markers(kb, fact.citations)) for fact in topic.facts),
        tables=tables,
        related=tuple(kb.topics[r] for r in topic.related),
    )


def _cited_sources(kb: KnowledgeBase, chosen: Sequence[Topic]) -> list[Source]:
    return [kb.sources[i] for i in kb.cited_source_ids(t.id for t in chosen)]


def _source_note(source: Source) -> str:
    """The text after a source's marker in a source list: its full citation and any reliability note."""
    text = source.label
    if source.url:
        text += f" ({source.url})"
    if source.reliability_note:
        text += f". Note: {source.reliability_note}"
    return text


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_link(text: str, anchor: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return f"[{escaped}](#{anchor})"


def render_markdown(
    kb: KnowledgeBase,
    *,
    topics: Sequence[str] | None = None,
    include_sources: bool = True,
    navigation: bool | None = None,
) -> str:
    """Render topics as Markdown for the Work-up guide, the CLI and reports.

    Every bullet and table row ends with its citation markers (each source's name as a clinician knows it,
    e.g. ``[Heath et al., J Am Acad Dermatol 2008]``), and the Sources section repeats each marker with the
    page's publisher and title or the publication's reference and PMID (never an internal file name), with any
    reliability note, so a reader can check any statement. Unknown topic ids raise ``GuidanceError`` listing
    the valid ones.

    ``navigation`` (by default: when all topics are rendered, i.e. the full guide) adds a table of contents
    linking to each topic, an anchor before each topic heading (``topic_anchor``, as ``<a id>``, which
    Gradio's Markdown sanitiser keeps) and links from "See also" to the topics rendered in the same text (the
    others stay plain titles). Leave it off for a second rendering on the same page: HTML ids must be unique
    in a page, and a duplicate would send the links to whichever copy comes first.
    """
    chosen = _select(kb, topics)
    linked = topics is None if navigation is None else navigation
    rendered = {topic.id for topic in chosen}
    lines: list[str] = [f"> {NOTE}", ""]
    if linked:
        lines += ["**Contents**", ""]
        lines += [f"- {_md_link(topic.title, topic_anchor(topic.id))}" for topic in chosen]
        if include_sources:
            lines.append(f"- {_md_link('Sources', SOURCES_ANCHOR)}")
        lines.append("")
    for view in (_view(kb, topic) for topic in chosen):
        topic = view.topic
        if linked:
            lines += [f'<a id="{topic_anchor(topic.id)}"></a>', ""]
        lines += [f"## {topic.title}", "", f"*{topic.audience_summary}*", ""]
        lines += [f"- {text} {markers}" for text, markers in view.facts]
        lines.append("")
        for title, columns, rows in view.tables:
            lines += [f"**{title}**", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
            lines.append("|" + "---|" * len(columns))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        if view.related:
            entries = [
                _md_link(r.title, topic_anchor(r.id)) if linked and r.id in rendered else r.title for r in view.related
            ]
            lines += [f"See also: {'; '.join(entries)}.", ""]
    if include_sources:
        if linked:
            lines += [f'<a id="{SOURCES_ANCHOR}"></a>', ""]
        lines += ["## Sources", ""]
        lines += [f"- **[{source.cite}]** {_source_note(source)}" for source in _cited_sources(kb, chosen)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_collapsible_html(kb: KnowledgeBase, topics: Sequence[str], *, full_guide: str = FULL_GUIDE) -> str:
    """Render topics as HTML with one closed ``<details>`` block per topic, for the triage result.

    Under a triage result the reader needs to see which work-up topics apply, not read all of them: the
    Markdown of a suspected MCC's eight topics made a page several thousand pixels long below every result
    (16 kB, 6,400 px before the markers named their sources in full). Here each
    topic is a ``<details>`` whose summary is its title, closed until opened, holding the same summary, facts,
    tables and citation markers as ``render_markdown``; the educational-guidance note comes first, a sentence
    then points to ``full_guide`` for every topic, and the sources the chosen topics cite close the block. All
    text is HTML-escaped. No element carries an id, so the block can share a page with the linked full guide.
    Returns ``""`` for no topics (a benign differential shows nothing); unknown ids raise ``GuidanceError``.
    Meant for gr.HTML, which keeps it as it is; gr.Markdown renders it too but drops the ``data-topic``
    attribute each ``<details>`` carries for tests and styling.
    """
    chosen = _select(kb, topics)
    if not chosen:
        return ""
    e = functools.partial(html.escape, quote=True)
    count = f"{len(chosen)} work-up topic{'s' if len(chosen) != 1 else ''} for this differential"
    parts = [
        '<div class="guidance">',
        f'<p class="guidance-note"><em>{e(NOTE)}</em></p>',
        f'<p class="guidance-pointer">{e(f"{count}. Open a title to read it; {full_guide} shows every topic.")}</p>',
    ]
    for view in (_view(kb, topic) for topic in chosen):
        topic = view.topic
        parts += [
            f'<details class="guidance-topic" data-topic="{e(topic.id)}">',
            f"<summary>{e(topic.title)}</summary>",
            f"<p><em>{e(topic.audience_summary)}</em></p>",
            "<ul>",
            *(f'<li>{e(text)} <span class="guidance-cite">{e(markers)}</span></li>' for text, markers in view.facts),
            "</ul>",
        ]
        for title, columns, rows in view.tables:
            parts += [
                "<table>",
                f"<caption>{e(title)}</caption>",
                "<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead>",
                "<tbody>",
                *("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows),
                "</tbody>",
                "</table>",
            ]
        if view.related:
            parts.append(f"<p>See also in {e(full_guide)}: {e('; '.join(r.title for r in view.related))}.</p>")
        parts.append("</details>")
    parts += ['<p class="guidance-sources-title"><strong>Sources</strong></p>', '<ul class="guidance-sources">']
    parts += [
        f"<li><strong>{e(f'[{source.cite}]')}</strong> {e(_source_note(source))}</li>"
        for source in _cited_sources(kb, chosen)
    ]
    parts += ["</ul>", "</div>"]
    return "\n".join(parts) + "\n"


def _source_json(source: Source) -> dict[str, Any]:
    # Everything but "provenance" may be shown to a clinician; "provenance" (the copied page's file
    # name, or the fact sheet a publication was taken from) is for audits and is not for display.
    return {
        "id": source.id,
        "kind": source.kind,
        "title": source.title,
        "publisher": source.publisher,
        "reference": source.reference,
        "pmid": source.pmid,
        "url": source.url,
        "reliability_note": source.reliability_note,
        "cite": source.cite,
        "label": source.label,
        "provenance": {"file": source.file, "via": source.via},
    }


def to_json(kb: KnowledgeBase, *, topics: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-safe dict of the chosen topics (all by default) for the web app and API.

    Each citation is resolved to its id, its marker name (``cite``) and its one-line label so a client can
    show it without a second lookup; ``sources`` holds the full entries of the sources those topics cite.
    Only a source's ``provenance`` (file name, fact sheet) names internal files, and it is not meant for
    display.
    """
    chosen = _select(kb, topics)

    def cites(ids: Iterable[str]) -> list[dict[str, str]]:
        return [{"id": i, "cite": kb.sources[i].cite, "label": kb.sources[i].label} for i in ids]

    return {
        "note": NOTE,
        "topics": [
            {
                "id": topic.id,
                "title": topic.title,
                "audience_summary": topic.audience_summary,
                "facts": [{"text": f.text, "citations": cites(f.citations)} for f in topic.facts],
                "tables": [
                    {
                        "title": table.title,
                        "columns": list(table.columns),
                        "rows": [{"cells": list(r.cells), "citations": cites(r.citations)} for r in table.rows],
                    }
                    for table in topic.tables
                ],
                "related": list(topic.related),
            }
            for topic in chosen
        ],
        "sources": {i: _source_json(kb.sources[i]) for i in kb.cited_source_ids(t.id for t in chosen)},
    }
