"""The work-up guidance knowledge base: every statement cited, every citation resolvable, nothing copied."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from skintriage.guidance import (
    DIFFERENTIAL_TOPICS,
    GUIDANCE_DIR,
    GuidanceError,
    KnowledgeBase,
    load_guidance,
    render_markdown,
    to_json,
    topic_ids,
    topics_for_differential,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DOCUMENTS = SHARED / "documents"
CLINICAL_FACTS = SHARED / "clinical_facts.md"

# The five copied web pages listed in ../shared/documents/README.md (kept here so the check also runs
# where that folder is absent).
DOCUMENT_FILES = {
    "000_a991662f92536825.txt",
    "001_460af97a28b409ee.txt",
    "002_de9974050e61498d.txt",
    "003_ed33f24481df592c.txt",
    "004_c1d240f4a12ae3b0.txt",
}

REQUIRED_TOPICS = {
    "biopsy",
    "immunohistochemistry",
    "grading",
    "biochemistry",
    "imaging",
    "nodal_staging",
    "pitfalls",
    "skin_signs_of_net",
    "aeiou",
    "cutaneous_metastasis",
}

RUN = 10  # a run of this many consecutive words shared with a source counts as copying


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_guidance()


def documents_folder() -> Path:
    if not DOCUMENTS.is_dir():
        pytest.skip(
            f"../shared/documents not present: {DOCUMENTS} is absent (it exists only on the project's machines)"
        )
    return DOCUMENTS


def words(text: str) -> list[str]:
    """Case, whitespace and punctuation normalised away: 'Ki-67, <3%' -> ['ki', '67', '3']."""
    return re.findall(r"[a-z0-9]+", text.lower())


def runs(text: str, n: int = RUN) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def all_topic_texts(kb: KnowledgeBase) -> list[str]:
    texts: list[str] = []
    for topic in kb.topics.values():
        texts += [topic.title, topic.audience_summary, *(f.text for f in topic.facts)]
        for table in topic.tables:
            texts += [table.title, *table.columns, *(cell for row in table.rows for cell in row.cells)]
    return texts


# --------------------------------------------------------------------------------------------------
# Citations and sources
# --------------------------------------------------------------------------------------------------


def test_every_fact_and_table_row_is_cited_and_every_citation_resolves(kb):
    for topic in kb.topics.values():
        for index, fact in enumerate(topic.facts, 1):
            assert fact.citations, f"{topic.id} fact {index} has no citation"
            assert set(fact.citations) <= set(kb.sources), (topic.id, index, fact.citations)
        for table in topic.tables:
            for index, row in enumerate(table.rows, 1):
                assert row.citations, f"{topic.id} table {table.title!r} row {index} has no citation"
                assert set(row.citations) <= set(kb.sources), (topic.id, table.title, index)
                assert len(row.cells) == len(table.columns)


def test_every_source_is_cited_at_least_once(kb):
    orphans = set(kb.sources) - set(kb.cited_source_ids())
    assert not orphans, f"sources never cited: {sorted(orphans)}"


def test_source_entries_are_complete_for_their_kind(kb):
    kinds = {s.kind for s in kb.sources.values()}
    assert kinds == {"document", "literature"}
    for source in kb.sources.values():
        if source.kind == "document":
            assert source.file in DOCUMENT_FILES, source
            assert source.publisher and source.title
        else:
            assert source.reference and source.via == "clinical_facts.md", source
            assert source.pmid is None or source.pmid.isdigit()
    # Every one of the five documents is used, and the AI-generated page carries its caveat.
    assert {s.file for s in kb.sources.values() if s.kind == "document"} == DOCUMENT_FILES
    oracle = next(s for s in kb.sources.values() if s.file == "001_460af97a28b409ee.txt")
    assert oracle.reliability_note and "pending human review" in oracle.reliability_note
    # PMIDs exactly as clinical_facts.md gives them.
    pmids = {s.id: s.pmid for s in kb.sources.values() if s.pmid}
    assert pmids == {
        "Heath2008": "18280333",
        "Busam2009": "19609205",
        "Fukuhara2016": "27262585",
        "JAAD2021": "32707254",
        "JCutanPathol2013": "24218988",
    }


def test_documents_readme_lists_exactly_the_cited_files_with_their_title_and_publisher(kb):
    folder = documents_folder()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    rows = {
        cells[0]: cells[1]
        for line in readme.splitlines()
        if (cells := [c.strip() for c in line.strip().strip("|").split("|")]) and cells[0].endswith(".txt")
    }
    assert set(rows) == DOCUMENT_FILES
    for source in kb.sources.values():
        if source.kind != "document":
            continue
        publisher_in_readme = rows[source.file].split(":")[0].strip()
        assert publisher_in_readme in (source.publisher or ""), (source.id, publisher_in_readme)
        assert source.title in rows[source.file], (source.id, source.title)


def test_document_files_exist_and_their_opening_shows_the_title(kb):
    folder = documents_folder()
    for source in kb.sources.values():
        if source.kind != "document":
            continue
        path = folder / source.file
        assert path.is_file(), path
        text = path.read_text(encoding="utf-8")
        assert text.strip(), f"{path} is empty"
        opening = " ".join(words("\n".join(text.splitlines()[:120])))
        assert " ".join(words(source.title)) in opening, (source.id, source.title)


# --------------------------------------------------------------------------------------------------
# Own words: no run of 10 consecutive words from any document or from clinical_facts.md
# --------------------------------------------------------------------------------------------------


def _copied_runs(texts: list[str], source_text: str) -> list[str]:
    source_runs = runs(source_text)
    return sorted({" ".join(r) for text in texts for r in runs(text) & source_runs})


def test_no_copied_sentences_from_the_documents(kb):
    folder = documents_folder()
    topic_files = sorted((GUIDANCE_DIR / "topics").glob("*.yaml"))
    # The loaded strings, the raw topic files (comments included) and the sources' own notes; titles
    # and bibliographic references in sources.yaml are quoted on purpose and are not checked.
    texts = all_topic_texts(kb) + [p.read_text(encoding="utf-8") for p in topic_files]
    texts += [s.reliability_note for s in kb.sources.values() if s.reliability_note]
    for document in sorted(folder.glob("*.txt")):
        copied = _copied_runs(texts, document.read_text(encoding="utf-8"))
        assert not copied, f"{RUN}-word runs copied from {document.name}: {copied}"


def test_no_copied_sentences_from_clinical_facts(kb):
    if not CLINICAL_FACTS.is_file():
        pytest.skip(f"../shared/clinical_facts.md not present: {CLINICAL_FACTS} is absent")
    topic_files = sorted((GUIDANCE_DIR / "topics").glob("*.yaml"))
    texts = all_topic_texts(kb) + [p.read_text(encoding="utf-8") for p in topic_files]
    texts += [s.reliability_note for s in kb.sources.values() if s.reliability_note]
    copied = _copied_runs(texts, CLINICAL_FACTS.read_text(encoding="utf-8"))
    assert not copied, f"{RUN}-word runs copied from clinical_facts.md: {copied}"


def test_the_copy_check_itself_catches_a_copied_sentence():
    source = "Flushing is a common skin manifestation alongside neuroendocrine tumours, particularly those in the gut."
    assert _copied_runs(
        ["FLUSHING is a common skin-manifestation, alongside neuroendocrine tumours; particularly!"], source
    )
    assert not _copied_runs(["Flushing is frequent with neuroendocrine tumours of the gut."], source)


# --------------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------------


def test_required_topics_exist_in_snake_case(kb):
    assert set(kb.topics) >= REQUIRED_TOPICS
    assert topic_ids() == list(kb.topics)
    for topic in kb.topics.values():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", topic.id)
        assert topic.facts and topic.title and topic.audience_summary
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", topic.audience_summary)) <= 2, topic.id
        assert set(topic.related) <= set(kb.topics) and topic.id not in topic.related


def _table(kb: KnowledgeBase, topic: str):
    tables = kb.topics[topic].tables
    assert tables, f"{topic} has no table"
    return tables[0]


def test_ihc_table_has_the_markers_and_the_mcc_versus_metastasis_columns(kb):
    table = _table(kb, "immunohistochemistry")
    assert len(table.columns) == 4
    assert table.columns[0] == "Marker" and table.columns[1] == "MCC"
    assert "metastasis" in table.columns[2].lower() and "small-cell lung" in table.columns[2].lower()
    rows = {row.cells[0].split(" (")[0]: row for row in table.rows}
    for marker in ("CK20", "TTF-1", "CK7", "Synaptophysin", "Chromogranin A", "NSE", "Neurofilament", "INSM1"):
        assert marker in rows, f"IHC table lacks {marker}: {sorted(rows)}"
    # Figures exactly as clinical_facts.md gives them, and what INSM1 cannot tell.
    assert "paranuclear" in rows["CK20"].cells[1] and "90-100%" in rows["CK20"].cells[1]
    assert "Negative" in rows["TTF-1"].cells[1] and "35/36" in rows["TTF-1"].cells[2]
    assert "56/56" in rows["INSM1"].cells[1]
    assert "cannot tell MCC from a metastasis" in rows["INSM1"].cells[3]
    assert "96.7%" in rows["Neurofilament"].cells[3] and "7 of 9" in rows["Neurofilament"].cells[1]
    assert "95%" in rows["Synaptophysin"].cells[1] and "80%" in rows["Chromogranin A"].cells[1]
    assert rows["INSM1"].citations == ("Lilo2018",)
    assert any(r.cells[0].startswith("Merkel cell polyomavirus") and "27/36" in r.cells[1] for r in table.rows)
    assert {"LCA", "S100"} <= set(rows)


def test_grading_table_has_the_ki67_thresholds(kb):
    table = _table(kb, "grading")
    rows = {row.cells[0]: [c.replace(" ", "").replace("–", "-") for c in row.cells] for row in table.rows}
    assert rows["G1"][1:3] == ["<3%", "<2"]
    assert rows["G2"][1:3] == ["3-20%", "2-20"]
    assert rows["G3"][1:3] == [">20%", ">20"]
    assert any("NEC" in name for name in rows)


def test_key_figures_are_stated_with_their_sources(kb):
    def cited_text(topic: str, needle: str) -> set[str]:
        hits = [f for f in kb.topics[topic].facts if needle in f.text]
        assert hits, f"{needle!r} not in topic {topic}"
        return {c for f in hits for c in f.citations}

    assert "Heath2008" in cited_text("aeiou", "88%")
    assert "Heath2008" in cited_text("aeiou", "7.8%")
    assert "Heath2008" in cited_text("pitfalls", "56%")
    assert "Stokes2009" in cited_text("nodal_staging", "24%")
    assert "JAAD2021" in cited_text("nodal_staging", "16.8%")
    assert "CF-SLNB-series" in cited_text("nodal_staging", "31.8%")
    assert "JCutanPathol2013" in cited_text("cutaneous_metastasis", "about 35 cases")
    assert "CF-cutaneous-metastases" in cited_text("pitfalls", "up to a third")
    assert "iMedic" in cited_text("biochemistry", "proton pump inhibitors")
    assert "iMedic" in cited_text("biochemistry", "bananas")
    aeiou_limit = " ".join(f.text for f in kb.topics["aeiou"].facts)
    assert "specificity" in aeiou_limit and "not exclude" in aeiou_limit and "score" in aeiou_limit


# --------------------------------------------------------------------------------------------------
# Rendering and the differential mapping
# --------------------------------------------------------------------------------------------------


def test_markdown_has_note_every_topic_and_the_cited_sources(kb):
    text = render_markdown(kb)
    first = text.splitlines()[0]
    assert "not clinical advice" in first and "local guidelines take precedence" in first
    for topic in kb.topics.values():
        assert f"## {topic.title}" in text
    assert "## Sources" in text
    sources_part = text.split("## Sources", 1)[1]
    for source in kb.sources.values():
        assert f"[{source.id}]" in sources_part
        if source.kind == "document":
            assert source.file in sources_part and source.title in sources_part
        elif source.pmid:
            assert f"PMID {source.pmid}" in sources_part
    assert "| Marker | MCC |" in text  # the IHC table as a Markdown table
    assert "pending human review" in sources_part


def test_markdown_for_a_subset_lists_only_its_sources(kb):
    text = render_markdown(kb, topics=["grading"])
    assert "## Grading" in text and "## Nodal staging" not in text
    assert "[Heath2008]" not in text and "[iMedic]" in text
    assert "## Sources" not in render_markdown(kb, topics=["grading"], include_sources=False)


def test_unknown_topic_is_an_error_listing_the_valid_ids(kb):
    with pytest.raises(GuidanceError) as error:
        render_markdown(kb, topics=["biopsy", "no_such_topic"])
    message = str(error.value)
    assert "no_such_topic" in message and "immunohistochemistry" in message and "nodal_staging" in message
    with pytest.raises(GuidanceError, match="no_such_topic"):
        to_json(kb, topics=["no_such_topic"])


def test_to_json_round_trips(kb):
    data = to_json(kb)
    assert json.loads(json.dumps(data)) == data
    assert [t["id"] for t in data["topics"]] == list(kb.topics)
    fact = data["topics"][0]["facts"][0]
    assert fact["citations"][0]["id"] in data["sources"] and fact["citations"][0]["label"]
    ihc = next(t for t in data["topics"] if t["id"] == "immunohistochemistry")
    assert ihc["tables"][0]["columns"][0] == "Marker"
    subset = to_json(kb, topics=["aeiou"])
    assert list(subset["sources"]) == ["Heath2008"]


def test_topics_for_differential_is_ordered_without_duplicates():
    ids = topics_for_differential(["mcc", "cutaneous_metastasis"])
    assert len(ids) == len(set(ids))
    assert ids[:5] == ["aeiou", "biopsy", "immunohistochemistry", "nodal_staging", "pitfalls"]
    assert {"grading", "biochemistry", "imaging", "cutaneous_metastasis"} <= set(ids)
    assert set(ids) <= set(topic_ids())
    assert topics_for_differential(["other_malignant"]) == ["biopsy"]
    assert topics_for_differential(["cannot_assess", "other_malignant"]) == ["biopsy"]
    assert topics_for_differential([]) == []
    for entry, topics in DIFFERENTIAL_TOPICS.items():
        assert len(topics) == len(set(topics)), entry
        assert set(topics) <= set(topic_ids()), entry
    with pytest.raises(GuidanceError, match="cutaneous_metastasis"):
        topics_for_differential(["melanoma"])


def test_default_knowledge_base_is_cached():
    assert load_guidance() is load_guidance()


# --------------------------------------------------------------------------------------------------
# Validation errors on broken data
# --------------------------------------------------------------------------------------------------

SOURCES_YAML = """
sources:
  - id: S1
    kind: document
    file: 000_a991662f92536825.txt
    title: A page
    publisher: A publisher
  - id: L1
    kind: literature
    title: A paper
    reference: Someone et al., Journal 2000
    pmid: "123"
    via: clinical_facts.md
"""

GOOD_TOPIC = """
id: alpha
title: Alpha
audience_summary: One sentence.
facts:
  - text: A fact.
    citations: [S1]
"""


def write_kb(folder: Path, topics: dict[str, str], sources: str = SOURCES_YAML) -> Path:
    (folder / "topics").mkdir(parents=True, exist_ok=True)
    (folder / "sources.yaml").write_text(textwrap.dedent(sources), encoding="utf-8")
    for name, text in topics.items():
        (folder / "topics" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def test_a_small_valid_knowledge_base_loads(tmp_path):
    kb = load_guidance(write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC}))
    assert list(kb.topics) == ["alpha"] and kb.topics["alpha"].facts[0].citations == ("S1",)
    assert kb.sources["L1"].label == "Someone et al., Journal 2000, PMID 123"


def test_unknown_citation_names_file_topic_and_fact(tmp_path):
    topic = GOOD_TOPIC + "  - text: Second fact.\n    citations: [S1, NOPE]\n"
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError) as error:
        load_guidance(tmp_path)
    message = str(error.value)
    assert "01_alpha.yaml" in message and "'alpha'" in message and "fact 2" in message
    assert "unknown citation id 'NOPE'" in message


@pytest.mark.parametrize("citations", ["", "    citations: []\n"])
def test_fact_without_citation_is_rejected(tmp_path, citations):
    topic = GOOD_TOPIC + "  - text: Uncited fact.\n" + citations
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: topic 'alpha', fact 2: has no citation"):
        load_guidance(tmp_path)


def test_duplicate_topic_id_is_rejected(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC, "02_again.yaml": GOOD_TOPIC})
    with pytest.raises(GuidanceError, match=r"02_again\.yaml: duplicate topic id 'alpha'.*01_alpha\.yaml"):
        load_guidance(tmp_path)


def test_unknown_related_topic_is_rejected(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + "related: [beta]\n"})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: topic 'alpha': unknown related topic 'beta'"):
        load_guidance(tmp_path)


def test_table_row_with_wrong_cell_count_is_rejected(tmp_path):
    table = """
    tables:
      - title: T
        columns: [a, b, c]
        rows:
          - cells: [x, y, z]
            citations: [L1]
          - cells: [x, y]
            citations: [L1]
    """
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + textwrap.dedent(table)})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: topic 'alpha', table 1, row 2: has 2 cells .* 3 columns"):
        load_guidance(tmp_path)


def test_table_row_without_citation_is_rejected(tmp_path):
    table = "tables:\n  - title: T\n    columns: [a, b]\n    rows:\n      - cells: [x, y]\n"
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + table})
    with pytest.raises(GuidanceError, match=r"table 1, row 1: has no citation"):
        load_guidance(tmp_path)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        (GOOD_TOPIC.replace("title: Alpha\n", ""), "missing field 'title'"),
        (GOOD_TOPIC.replace("audience_summary: One sentence.\n", ""), "missing field 'audience_summary'"),
        (GOOD_TOPIC.replace("  - text: A fact.\n", "  - txt: A fact.\n"), "unknown field"),
        ("id: alpha\ntitle: A\naudience_summary: B.\n", "missing field 'facts'"),
        (GOOD_TOPIC.replace("id: alpha", "id: Alpha-Topic"), "snake_case"),
    ],
)
def test_missing_or_misspelt_topic_fields_are_rejected(tmp_path, topic, problem):
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml") as error:
        load_guidance(tmp_path)
    assert problem in str(error.value)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("    publisher: A publisher\n", ""), "source 1 ('S1'): missing field 'publisher'"),
        (("    via: clinical_facts.md\n", ""), "source 2 ('L1'): missing field 'via'"),
        (("    reference: Someone et al., Journal 2000\n", ""), "source 2 ('L1'): missing field 'reference'"),
        (("kind: literature", "kind: blog"), "kind must be one of"),
        (("id: L1", "id: S1"), "duplicate source id 'S1'"),
        (('pmid: "123"', "pmid: PMID123"), "pmid must be digits"),
    ],
)
def test_broken_sources_are_rejected(tmp_path, edit, problem):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC}, sources=SOURCES_YAML.replace(*edit))
    with pytest.raises(GuidanceError, match=r"sources\.yaml") as error:
        load_guidance(tmp_path)
    assert problem in str(error.value)


def test_invalid_yaml_names_the_file(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": "id: [unclosed\n"})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: not valid YAML"):
        load_guidance(tmp_path)
