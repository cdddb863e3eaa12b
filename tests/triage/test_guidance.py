"""The work-up guidance knowledge base: every statement cited, every citation resolvable, nothing copied."""

from __future__ import annotations

import html
import json
import re
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest

from skintriage.triage.guidance import (
    DIFFERENTIAL_TOPICS,
    GUIDANCE_DIR,
    NOTE,
    GuidanceError,
    KnowledgeBase,
    load_guidance,
    render_collapsible_html,
    render_markdown,
    to_json,
    topic_anchor,
    topic_ids,
    topics_for_differential,
)
from skintriage.triage.referral import WORKUPS
from tests.helpers import REPO

SHARED = REPO.parent / "shared"
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

# One topic for each part of the work-up a dermatologist expects (several are split by pathway: a
# general biopsy topic and an MCC one; MCC staging/imaging apart from NET imaging).
REQUIRED_TOPICS = {
    "mcc_epidemiology",
    "aeiou",
    "biopsy",
    "mcc_biopsy_and_referral",
    "immunohistochemistry",
    "mcc_staging",
    "nodal_staging",
    "mcc_recurrence",
    "pitfalls",
    "metastasis_workup",
    "cutaneous_metastasis",
    "grading",
    "biochemistry",
    "net_imaging",
    "skin_signs_of_net",
    "management_overview",
}

# The topics that carry the neuroendocrine tests (blood/urine markers, somatostatin-receptor imaging)
# and NET grading: shown only for a known or suspected neuroendocrine tumour.
NET_ONLY_TOPICS = {"biochemistry", "net_imaging", "grading", "skin_signs_of_net"}

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
        "Paulson2018": "29102486",
        "Heath2008": "18280333",
        "Busam2009": "19609205",
        "Fukuhara2016": "27262585",
        "Iyer2014": "24521828",
        "Singh2021": "32707254",
        "Jedrych2014": "24218988",
    }


def test_literature_references_are_as_the_revised_fact_sheet_gives_them(kb):
    references = {s.id: s.reference for s in kb.sources.values() if s.kind == "literature"}
    expected = {
        "Paulson2018": "Paulson et al., J Am Acad Dermatol 2018;78:457-463",
        "Heath2008": "Heath et al., J Am Acad Dermatol 2008;58:375-381",
        "Stanoszek2019": "Stanoszek et al., Histopathology 2019;74:504-513",
        "Schmidt1998": "Schmidt et al., Am J Dermatopathol 1998;20:346-351",
        "ByrdGloster2000": "Byrd-Gloster et al., Hum Pathol 2000;31:58-62",
        "Cheuk2001": "Cheuk et al., Arch Pathol Lab Med 2001;125:228-231",
        "AbreuVelez2013": "Abreu Velez et al., Our Dermatol Online 2013",
        "Busam2009": "Busam et al., Am J Surg Pathol 2009",
        "Fukuhara2016": "Fukuhara et al., Arch Dermatol Res 2016",
        "Lilo2018": "Lilo et al., Am J Surg Pathol 2018",
        "Nagtegaal2020": "Nagtegaal et al., Histopathology 2020;76:182-188",
        "Gauci2022": "Gauci et al., Eur J Cancer 2022;171:203-231",
        "Iyer2014": "Iyer et al., J Am Acad Dermatol 2014",
        "Stokes2009": "Stokes et al., J Clin Oncol 2009",
        "Singh2021": "Singh et al., J Am Acad Dermatol 2021;84:330-339",
        "Lookingbill1993": "Lookingbill et al., J Am Acad Dermatol 1993;29:228-236",
        "Krathen2003": "Krathen et al., South Med J 2003;96:164-167",
        "Jedrych2014": "Jedrych et al., J Cutan Pathol 2014;41:113-122",  # 2014, not 2013
    }
    for source_id, reference in expected.items():
        assert references[source_id].startswith(reference), (source_id, references[source_id])
    assert "NCCN" in references["Gauci2022"] and "WHO 2019" in references["Nagtegaal2020"]
    # Every other literature entry is a statement of the fact sheet without a named publication, and says so.
    for source_id in set(references) - set(expected):
        assert source_id.startswith("CF-"), source_id
        assert re.search(r"no (single )?publication named|publications not named", references[source_id]), source_id
    # The article title the fact sheet now gives, and what that paper did not test.
    schmidt = kb.sources["Schmidt1998"]
    assert schmidt.title.startswith("Cytokeratin and neurofilament protein staining in Merkel cell carcinoma")
    assert schmidt.reliability_note and "did not test TTF-1" in schmidt.reliability_note
    assert "case report" in (kb.sources["AbreuVelez2013"].reliability_note or "").lower()
    if CLINICAL_FACTS.is_file():
        facts = " ".join(CLINICAL_FACTS.read_text(encoding="utf-8").split())
        for source_id, reference in expected.items():
            if source_id == "Schmidt1998":  # the fact sheet puts the title between authors and journal
                assert "Schmidt et al." in facts and "Am J Dermatopathol 1998;20:346-351" in facts
                assert schmidt.title in facts
            else:
                assert reference in facts, source_id


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


def _facts(kb: KnowledgeBase, topic: str, needle: str) -> list:
    hits = [f for f in kb.topics[topic].facts if needle in f.text]
    assert hits, f"{needle!r} not in topic {topic}"
    return hits


def _cited(kb: KnowledgeBase, topic: str, needle: str) -> set[str]:
    return {c for f in _facts(kb, topic, needle) for c in f.citations}


def test_ihc_table_has_the_markers_and_the_mcc_versus_metastasis_columns(kb):
    table = _table(kb, "immunohistochemistry")
    assert len(table.columns) == 4
    assert table.columns[0] == "Marker" and table.columns[1] == "MCC"
    assert "metastasis" in table.columns[2].lower() and "small-cell lung" in table.columns[2].lower()
    rows = {row.cells[0].split(" (")[0]: row for row in table.rows}
    for marker in ("CK20", "Neurofilament", "TTF-1", "CK7", "Synaptophysin", "Chromogranin A", "NSE", "INSM1"):
        assert marker in rows, f"IHC table lacks {marker}: {sorted(rows)}"
    assert {"SATB2", "TdT and PAX5", "LCA", "SOX10"} <= set(rows)
    assert any(r.cells[0].startswith("Merkel cell polyomavirus") and "27/36" in r.cells[1] for r in table.rows)
    # CK20: sensitivity as a range with its series, and its limited specificity.
    ck20 = rows["CK20"]
    assert "paranuclear" in ck20.cells[1] and "75-92%" in ck20.cells[1]
    assert all(f in ck20.cells[1] for f in ("89%", "92%", "75%")) and "90-100%" not in ck20.cells[1]
    assert "41%" in ck20.cells[2] and "59%" in ck20.cells[3]
    assert {"Busam2009", "Lilo2018", "Fukuhara2016", "Stanoszek2019"} <= set(ck20.citations)
    neurofilament = rows["Neurofilament"]
    assert "96.7%" in neurofilament.cells[3] and "59.0%" in neurofilament.cells[3]
    assert "7 of 9" in neurofilament.cells[1] and neurofilament.citations == ("Stanoszek2019",)
    # TTF-1: Byrd-Gloster's count, not Schmidt 1998 (which did not test TTF-1); Cheuk's limit.
    ttf1 = rows["TTF-1"]
    assert "0/21" in ttf1.cells[1] and "80-97%" in ttf1.cells[2]
    assert {"ByrdGloster2000", "Cheuk2001"} <= set(ttf1.citations) and "Schmidt1998" not in ttf1.citations
    chromogranin = rows["Chromogranin A"]
    assert "80% of 20" in chromogranin.cells[1] and "32% of 56" in chromogranin.cells[1]
    assert "Non-specific" in rows["NSE"].cells[1]
    assert "56/56" in rows["INSM1"].cells[1] and rows["INSM1"].citations == ("Lilo2018",)
    assert "cannot tell MCC from a metastasis" in rows["INSM1"].cells[3]
    assert "95%" in rows["Synaptophysin"].cells[1]
    assert "lymphoma" in rows["TdT and PAX5"].cells[3] and "S100" in rows["SOX10"].cells[3]
    assert "Case-report" in rows["CK7"].cells[3]


def test_schmidt_1998_is_never_cited_for_ttf1(kb):
    for topic in kb.topics.values():
        for fact in topic.facts:
            if "TTF-1" in fact.text and "Schmidt1998" in fact.citations:
                pytest.fail(f"{topic.id}: Schmidt 1998 did not test TTF-1: {fact.text}")
        for table in topic.tables:
            for row in table.rows:
                assert not (row.cells[0] == "TTF-1" and "Schmidt1998" in row.citations), topic.id


def test_grading_follows_who_2019(kb):
    table = _table(kb, "grading")
    assert "2 mm²" in table.columns[2]
    rows = {row.cells[0]: [c.replace(" ", "").replace("–", "-") for c in row.cells] for row in table.rows}
    assert rows["G1"][1:3] == ["<3%", "<2"]
    assert rows["G2"][1:3] == ["3-20%", "2-20"]
    assert rows["G3"][1:3] == [">20%", ">20"]
    assert any("NEC" in name and "morphology" in row[3] for name, row in rows.items())
    assert all(row.citations == ("Nagtegaal2020",) for row in table.rows)
    text = " ".join(f.text for f in kb.topics["grading"].facts)
    assert "higher grade" in text and "per 2 mm²" in text and "10 high-power fields" in text  # and how they differ
    assert "lung carcinoids" in text and "typical or atypical carcinoid" in text
    assert "high-grade neuroendocrine carcinoma arising in the skin, is not graded by Ki-67" in text
    assert "from a NET G3 is its morphology" in text and "not the Ki-67 value" in text


def test_revised_figures_are_stated_with_their_sources(kb):
    # MCC epidemiology and risk groups.
    assert "Paulson2018" in _cited(kb, "mcc_epidemiology", "0.7 new cases for every 100,000 person-years")
    assert "Paulson2018" in _cited(kb, "mcc_epidemiology", "about 75")
    assert _facts(kb, "mcc_epidemiology", "about 80%") and _facts(kb, "mcc_epidemiology", "about 40%")
    assert _facts(kb, "mcc_epidemiology", "organ transplants") and _facts(kb, "mcc_epidemiology", "HIV")
    # AEIOU and its limits.
    assert "Heath2008" in _cited(kb, "aeiou", "88%") and "Heath2008" in _cited(kb, "aeiou", "7.8%")
    assert "Heath2008" in _cited(kb, "aeiou", "89%") and _facts(kb, "aeiou", "1 in 10")
    for needle in ("56% of tumours were red or pink", "1.8 cm", "(32%)", "14% of patients"):
        assert _facts(kb, "aeiou", needle)
    limit = " ".join(f.text for f in kb.topics["aeiou"].facts)
    assert "specificity" in limit and "do not pick it out" in limit and "score" in limit
    assert "Heath2008" in _cited(kb, "pitfalls", "56%")
    # Staging: AJCC 8th, FDG-PET/CT, sentinel node biopsy; the imaging study's denominators.
    assert "Gauci2022" in _cited(kb, "mcc_staging", "AJCC 8th edition")
    assert "Gauci2022" in _cited(kb, "mcc_staging", "FDG-PET/CT is preferred")
    assert "Gauci2022" in _cited(kb, "mcc_staging", "sentinel lymph node biopsy is recommended whatever the size")
    singh = _facts(kb, "mcc_staging", "16.8% of 352")[0]
    assert "6.9% of 231" in singh.text and "1 in 8" in singh.text and "about 8%" in singh.text
    assert singh.citations == ("Singh2021",) and "584 patients" in singh.text
    assert not any("492" in f.text or "13.2%" in f.text for t in kb.topics.values() for f in t.facts)
    # Nodal risk by size: Iyer 2014 as well as Stokes 2009.
    assert "Iyer2014" in _cited(kb, "nodal_staging", "14% even for primaries of 0.5 cm")
    assert {"Stokes2009", "Iyer2014"} <= _cited(kb, "nodal_staging", "about 4%")
    assert "CF-SLNB-series" in _cited(kb, "nodal_staging", "31.8%")
    assert _facts(kb, "nodal_staging", "publication bias")
    # Cutaneous metastases: the revised figures replace the old ones.
    assert "Lookingbill1993" in _cited(kb, "cutaneous_metastasis", "4,020")
    assert "Krathen2003" in _cited(kb, "cutaneous_metastasis", "breast (about 69%)")
    assert "Krathen2003" in _cited(kb, "cutaneous_metastasis", "lung (about 24%)")
    assert "Jedrych2014" in _cited(kb, "cutaneous_metastasis", "about 35 cases")
    patterns = " ".join(f.text for f in _facts(kb, "cutaneous_metastasis", "Sister Mary Joseph"))
    for pattern in (
        "pyogenic granuloma",
        "renal cell",
        "erysipeloides",
        "en cuirasse",
        "scalp",
        "alopecia neoplastica",
    ):
        assert pattern in patterns
    everything = " ".join(all_topic_texts(kb))
    for outdated in ("About 5% of patients", "2% of skin tumours", "up to a third", "90-100%", "35/36", "43/52"):
        assert outdated not in everything, outdated
    # Biochemistry: confounders, PPI washout, 5-HIAA preparation.
    assert "CF-net-biochemistry" in _cited(kb, "biochemistry", "H2 blockers")
    assert "atrophic gastritis" in _facts(kb, "biochemistry", "H2 blockers")[0].text
    assert "CF-net-biochemistry" in _cited(kb, "biochemistry", "about two weeks")
    assert {"CF-net-biochemistry", "iMedic"} <= _cited(kb, "biochemistry", "48-72 hours")
    assert "iMedic" in _cited(kb, "biochemistry", "bananas")
    # Skin signs of NETs beyond the documents.
    assert "CF-net-skin-signs" in _cited(kb, "skin_signs_of_net", "Pellagra")
    assert "CF-net-skin-signs" in _cited(kb, "skin_signs_of_net", "glucagonoma")
    assert "CF-net-skin-signs" in _cited(kb, "skin_signs_of_net", "without liver metastases")


def test_management_overview_names_mcc_treatments_and_keeps_net_drugs_to_nets(kb):
    mcc = _facts(kb, "management_overview", "immune checkpoint inhibitors")[0].text
    assert all(drug in mcc for drug in ("avelumab", "pembrolizumab", "retifanlimab", "adjuvant radiotherapy"))
    net_only = _facts(kb, "management_overview", "not standard MCC care")[0].text
    assert "Somatostatin analogues, everolimus and PRRT" in net_only


def test_node_dissection_is_never_recommended_for_node_negative_mcc(kb):
    # The AI-generated page's advice (regional node dissection for a localised primary) appears only
    # where the text says the sources disagree and gives the guideline position (SLNB).
    for topic in kb.topics.values():
        for fact in topic.facts:
            if "dissection" not in fact.text:
                continue
            if "DrOracle" in fact.citations:
                assert "disagree" in fact.text and "sentinel lymph node biopsy" in fact.text, topic.id
            else:
                assert "node-positive" in fact.text or "nodal disease" in fact.text, (topic.id, fact.text)


def test_octreotide_caution_is_limited_to_surgery_or_anaesthesia(kb):
    for topic in ("biopsy", "management_overview"):
        text = " ".join(f.text for f in _facts(kb, topic, "octreotide cover"))
        assert "carcinoid syndrome" in text and "anaesthesia" in text and "no reason to" in text, topic


def test_weak_sources_are_never_the_only_support_for_advice(kb):
    # A fact resting only on the AI-generated or consumer pages must report what the page says rather
    # than advise: it names the page (or NECA/iMedic) or is plainly descriptive.
    weak = {"DrOracle", "iMedic", "CSC", "NECA-skin", "NECA-treatment"}
    advice = re.compile(r"\b(should|must|recommended|advised|consider)\b", re.IGNORECASE)
    for topic in kb.topics.values():
        for fact in topic.facts:
            if set(fact.citations) <= weak and advice.search(fact.text):
                assert re.search(r"Dr\.Oracle|iMedic|NECA|consumer", fact.text), (topic.id, fact.text)


# --------------------------------------------------------------------------------------------------
# Every number quoted is a figure of clinical_facts.md or of a cited page
# --------------------------------------------------------------------------------------------------

# A number: integer, decimal or thousands-grouped, optionally a range (75-92) and a percent sign. Digits
# that are part of a name are not figures and are not matched: CK20, Ki-67, TTF-1, Ga-68, G1/G2/G3,
# 5-HIAA, 24-hour, AJCC 8th, CD45, p53, H2 blockers, lutetium-177 (a letter or "letter-" right before
# the digits, or a letter or "-letter" right after them).
_FIGURE = r"(?<![A-Za-z0-9.,/])(?<![A-Za-z]-)(\d+(?:,\d{3})*(?:\.\d+)?(?:\s*[-–]\s*\d+(?:,\d{3})*(?:\.\d+)?)?(?:\s*%)?)"
_NUMBER = re.compile(_FIGURE + r"(?![A-Za-z0-9])(?!-[A-Za-z])")
# In the sources a figure may also be glued to a unit ("30-fold", "24-hour", "3-month"), which the
# guidance may write out ("more than 30", "over 24 hours"); a name's digits are still not a figure.
_SOURCE_NUMBER = re.compile(_FIGURE + r"(?![0-9])(?![A-Za-z])")
# Numbers in the guidance that are not figures and so need not appear in a source. It is empty: the
# pattern above already skips the digits of names and units (AJCC 8th, G1/G2/G3, 24-hour, Ki-67), and
# the remaining non-figures (the "2" of "per 2 mm²", years such as "Busam 2009" or "WHO 2019") are in
# the fact sheet anyway. Add an entry only with its reason beside it; test_the_allowlist_is_needed
# rejects entries that a source already contains or that the guidance no longer uses.
NOT_FIGURES: frozenset[str] = frozenset()


def numbers(text: str, pattern: re.Pattern[str] = _NUMBER) -> set[str]:
    """The figures in a text, normalised: '75 – 92 %' -> '75-92%', '/21' -> '21'."""
    found = set()
    for match in pattern.finditer(text.replace("/", " / ")):
        found.add(re.sub(r"\s+", "", match.group(1)).replace("–", "-"))
    return found


def test_the_number_extraction_finds_figures_and_skips_names():
    text = "CK20 in 75–92% (Busam 89%), 0/21, 4,020 patients, Ki-67 < 3%, 5-HIAA, AJCC 8th, 0.5 cm, G2, 24-hour"
    assert numbers(text) == {"75-92%", "89%", "0", "21", "4,020", "3%", "0.5"}


def _sources_text(kb: KnowledgeBase, citations: tuple[str, ...], facts_text: str) -> str:
    texts = [facts_text]
    for source_id in citations:
        source = kb.sources[source_id]
        if source.kind == "document":
            texts.append((DOCUMENTS / (source.file or "")).read_text(encoding="utf-8"))
    return "\n".join(texts)


def _unsourced_numbers(text: str, source_text: str) -> set[str]:
    return numbers(text) - numbers(source_text, _SOURCE_NUMBER) - NOT_FIGURES


def test_every_number_quoted_appears_in_the_fact_sheet_or_a_cited_page(kb):
    if not CLINICAL_FACTS.is_file() or not DOCUMENTS.is_dir():
        pytest.skip(f"../shared not present: {CLINICAL_FACTS} and {DOCUMENTS} are needed to check the figures")
    facts_text = CLINICAL_FACTS.read_text(encoding="utf-8")
    problems = []
    for topic in kb.topics.values():
        topic_citations = tuple(dict.fromkeys(c for c in kb.cited_source_ids([topic.id])))
        # Title and summary have no citations of their own: they may use the figures of the topic's sources.
        for text in (topic.title, topic.audience_summary, *(t.title for t in topic.tables)):
            if extra := _unsourced_numbers(text, _sources_text(kb, topic_citations, facts_text)):
                problems.append((topic.id, text, sorted(extra)))
        for fact in topic.facts:
            if extra := _unsourced_numbers(fact.text, _sources_text(kb, fact.citations, facts_text)):
                problems.append((topic.id, fact.text, sorted(extra)))
        for table in topic.tables:
            source_text = _sources_text(kb, topic_citations, facts_text)
            for column in table.columns:
                if extra := _unsourced_numbers(column, source_text):
                    problems.append((topic.id, column, sorted(extra)))
            for row in table.rows:
                text = " | ".join(row.cells)
                if extra := _unsourced_numbers(text, _sources_text(kb, row.citations, facts_text)):
                    problems.append((topic.id, text, sorted(extra)))
    assert not problems, "numbers found in neither clinical_facts.md nor a cited page:\n" + "\n".join(
        f"{topic}: {sorted_extra} in {text!r}" for topic, text, sorted_extra in problems
    )


def test_the_allowlist_is_needed(kb):
    if not CLINICAL_FACTS.is_file():
        pytest.skip(f"../shared/clinical_facts.md not present: {CLINICAL_FACTS} is absent")
    in_sources = numbers(CLINICAL_FACTS.read_text(encoding="utf-8"), _SOURCE_NUMBER)
    used = set().union(*(numbers(text) for text in all_topic_texts(kb)))
    assert not NOT_FIGURES & in_sources and used >= NOT_FIGURES


def test_the_number_check_itself_catches_an_invented_figure():
    source = "CK20 sensitivity 75-92% in recent series; 16.8% of 352 versus 6.9% of 231."
    assert not _unsourced_numbers("CK20 is positive in 75-92%; 16.8% of 352 and 6.9% of 231 patients.", source)
    assert _unsourced_numbers("CK20 is positive in 90-100%.", source) == {"90-100%"}
    assert _unsourced_numbers("PET/CT upstaged 13.2% of 492.", source) == {"13.2%", "492"}


# --------------------------------------------------------------------------------------------------
# Rendering and the differential mapping
# --------------------------------------------------------------------------------------------------

INTERNAL_NAMES = re.compile(r"\d{3}_[0-9a-f]{16}\.txt|clinical_facts\.md|via clinical_facts", re.IGNORECASE)


def test_markdown_has_note_every_topic_and_the_cited_sources(kb):
    text = render_markdown(kb)
    first = text.splitlines()[0]
    assert "not clinical advice" in first and "local guidelines take precedence" in first
    for topic in kb.topics.values():
        assert f"## {topic.title}" in text
    assert "## Sources" in text
    sources_part = text.split("## Sources", 1)[1]
    for source in kb.sources.values():
        assert f"**[{source.cite}]**" in sources_part  # each marker resolved in the list, under the same name
        if source.kind == "document":
            assert f'{source.publisher}: "{source.title}"' in sources_part
        else:
            assert source.reference in sources_part
            if source.pmid:
                assert f"{source.reference}, PMID {source.pmid}" in sources_part
    assert "| Marker | MCC |" in text  # the IHC table as a Markdown table
    assert "pending human review" in sources_part


def test_rendered_text_names_no_internal_files(kb):
    text = render_markdown(kb)
    for document in DOCUMENT_FILES:
        assert document not in text
    assert "clinical_facts.md" not in text and "via clinical_facts.md" not in text
    assert not INTERNAL_NAMES.search(text)
    for key in DIFFERENTIAL_TOPICS:
        assert not INTERNAL_NAMES.search(render_markdown(kb, topics=topics_for_differential([key])))

    # JSON: everything a UI shows (all but each source's "provenance") is just as clean.
    data = to_json(kb)
    shown = {
        **data,
        "sources": {i: {k: v for k, v in s.items() if k != "provenance"} for i, s in data["sources"].items()},
    }
    assert not INTERNAL_NAMES.search(json.dumps(shown, ensure_ascii=False))
    # The provenance is still there for audits.
    oracle = data["sources"]["DrOracle"]
    assert oracle["provenance"]["file"] == "001_460af97a28b409ee.txt" and oracle["label"].startswith("Dr.Oracle:")
    assert data["sources"]["Heath2008"]["provenance"]["via"] == "clinical_facts.md"


def test_markdown_for_a_subset_lists_only_its_sources(kb):
    text = render_markdown(kb, topics=["grading"])
    assert f"## {kb.topics['grading'].title}" in text and "## Nodal staging" not in text
    assert f"[{kb.sources['Heath2008'].cite}]" not in text
    assert "[iMedic (consumer guide), 'Neuroendocrine Tumors (NET)']" in text
    assert "[Nagtegaal et al., Histopathology 2020]" in text
    assert "## Sources" not in render_markdown(kb, topics=["grading"], include_sources=False)


# --- citation names a clinician recognises


def test_citation_markers_use_recognisable_names_not_source_ids(kb):
    assert kb.sources["Heath2008"].cite == "Heath et al., J Am Acad Dermatol 2008"
    assert kb.sources["NECA-skin"].cite == "NeuroEndocrine Cancer Australia (NECA), 'Skin Changes and NETs'"
    assert kb.sources["CF-biopsy"].cite == "Clinical review 2026 (fact sheet): biopsy"
    assert kb.sources["DrOracle"].cite.startswith("Dr.Oracle (AI-generated")  # the caveat travels with the marker
    cites = [source.cite for source in kb.sources.values()]
    assert len(set(cites)) == len(cites)  # a marker names one source
    for source in kb.sources.values():
        if source.id.startswith("CF-"):
            assert source.cite.startswith("Clinical review 2026 (fact sheet): "), source.id
        elif source.kind == "literature":
            assert source.reference and source.reference.startswith(source.cite), source.id
        assert "CF-" not in source.cite and not INTERNAL_NAMES.search(source.cite)
    every = list(kb.topics)
    for text in (render_markdown(kb), render_collapsible_html(kb, every)):
        assert "CF-" not in text
        for source in kb.sources.values():
            assert f"[{source.id}]" not in text or f"[{source.id}]" == f"[{source.cite}]", source.id
    # A fact's markers, in the order of its citations.
    fact = kb.topics["mcc_epidemiology"].facts[2]
    assert fact.citations == ("CF-mcc-background", "Heath2008")
    assert (
        f"{fact.text} [Clinical review 2026 (fact sheet): MCC background] [Heath et al., J Am Acad Dermatol 2008]"
        in render_markdown(kb)
    )
    # JSON clients get the same name next to the id.
    data = to_json(kb, topics=["biopsy"])
    assert data["topics"][0]["facts"][0]["citations"][0] == {
        "id": "CF-biopsy",
        "cite": "Clinical review 2026 (fact sheet): biopsy",
        "label": kb.sources["CF-biopsy"].label,
    }
    assert data["sources"]["CF-biopsy"]["cite"] == "Clinical review 2026 (fact sheet): biopsy"


# --- the linked full guide: table of contents, anchors, "See also" links

MD_LINK = re.compile(r"(?<!\\)\[((?:\\.|[^\]\\])*)\]\(#([^)\s]+)\)")
MD_ANCHOR = re.compile(r'^<a id="([^"]+)"></a>$', re.MULTILINE)


def test_full_guide_starts_with_a_table_of_contents_linking_every_topic(kb):
    text = render_markdown(kb)
    assert text.splitlines()[0].startswith("> ")  # the note stays first
    contents = text.split("**Contents**", 1)[1].split("\n\n<a id=", 1)[0]
    links = MD_LINK.findall(contents)
    assert links == [(t.title, topic_anchor(t.id)) for t in kb.topics.values()] + [("Sources", "guide-sources")]
    assert text.index("**Contents**") < text.index(f"## {next(iter(kb.topics.values())).title}")


def test_every_topic_heading_has_one_stable_anchor_right_before_it(kb):
    text = render_markdown(kb)
    anchors = MD_ANCHOR.findall(text)
    assert anchors == [f"topic-{t}" for t in kb.topics] + ["guide-sources"]  # unique, derived from the ids
    for topic in kb.topics.values():
        assert f'<a id="topic-{topic.id}"></a>\n\n## {topic.title}\n' in text
    assert '<a id="guide-sources"></a>\n\n## Sources\n' in text
    # Every link in the guide lands on an anchor of the same text.
    targets = {target for _, target in MD_LINK.findall(text)}
    assert targets and targets <= set(anchors)


def test_see_also_entries_link_to_the_related_topics(kb):
    text = render_markdown(kb)
    for topic in kb.topics.values():
        if not topic.related:
            continue
        section = text.split(f"## {topic.title}\n", 1)[1].split("\n## ", 1)[0]
        see_also = [line for line in section.splitlines() if line.startswith("See also: ")]
        assert len(see_also) == 1, topic.id
        expected = [(kb.topics[r].title, topic_anchor(r)) for r in topic.related]
        assert MD_LINK.findall(see_also[0]) == expected, topic.id
    assert (
        "See also: [Immunohistochemistry: MCC versus metastasis](#topic-immunohistochemistry); "
        "[Pitfalls: MCC versus metastasis](#topic-pitfalls)." in text
    )


def test_a_subset_has_no_anchors_by_default_and_links_only_to_what_it_renders(kb):
    ids = topics_for_differential(["metastasis"])
    plain = render_markdown(kb, topics=ids)
    assert "**Contents**" not in plain and "<a id=" not in plain and not MD_LINK.search(plain)
    assert "See also: Immunohistochemistry: MCC versus metastasis; Pitfalls: MCC versus metastasis." in plain
    linked = render_markdown(kb, topics=ids, navigation=True)
    assert MD_ANCHOR.findall(linked) == [topic_anchor(t) for t in ids] + ["guide-sources"]
    targets = {target for _, target in MD_LINK.findall(linked)}
    assert targets == {topic_anchor(t) for t in ids} | {"guide-sources"}  # nothing points off the page
    assert "; Pitfalls: MCC versus metastasis." in linked  # not rendered here: plain title
    assert "<a id=" not in render_markdown(kb, navigation=False)
    no_sources = render_markdown(kb, include_sources=False)
    assert "guide-sources" not in no_sources and "## Sources" not in no_sources


def test_link_text_is_escaped_for_markdown(tmp_path):
    topic = GOOD_TOPIC.replace("title: Alpha", 'title: "Alpha [draft] \\\\ x"') + "related: [beta]\n"
    beta = GOOD_TOPIC.replace("id: alpha", "id: beta").replace("title: Alpha", "title: Beta")
    kb = load_guidance(write_kb(tmp_path, {"01_alpha.yaml": topic, "02_beta.yaml": beta}))
    assert kb.topics["alpha"].title == "Alpha [draft] \\ x"
    text = render_markdown(kb)
    assert "- [Alpha \\[draft\\] \\\\ x](#topic-alpha)" in text
    assert MD_LINK.findall(text)[0] == ("Alpha \\[draft\\] \\\\ x", "topic-alpha")
    assert "See also: [Beta](#topic-beta)." in text


# --- the collapsed HTML for the triage result


class _Html(HTMLParser):
    """A strict-enough reading of the renderer's HTML: tags balance, and each <details> block's parts."""

    VOID: ClassVar[set[str]] = {"br", "hr", "img"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.details: list[dict] = []
        self.ids: list[str] = []
        self.outside: list[str] = []  # text outside every <details>
        self.sources: list[str] = []  # items of the source list
        self._in_sources = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(attributes["id"] or "")
        if tag == "details":
            self.details.append({"attrs": attributes, "summary": "", "text": ""})
        if tag == "ul" and "guidance-sources" in (attributes.get("class") or ""):
            self._in_sources = True
        if tag == "li" and self._in_sources:
            self.sources.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "ul":
            self._in_sources = False

    def handle_data(self, data):
        if "details" in self.stack:
            block = self.details[-1]
            block["text"] += data
            if "summary" in self.stack:
                block["summary"] += data
        else:
            self.outside.append(data)
            if self._in_sources and self.sources:
                self.sources[-1] += data


def parse_html(text: str) -> _Html:
    parser = _Html()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


@pytest.mark.parametrize("key", [k for k in DIFFERENTIAL_TOPICS if k != "benign"])
def test_collapsible_html_has_one_closed_details_per_requested_topic(kb, key):
    ids = topics_for_differential([key])
    text = render_collapsible_html(kb, ids)
    page = parse_html(text)
    assert [block["attrs"].get("data-topic") for block in page.details] == ids  # each once, in order
    assert text.count("<details") == len(ids) and text.count("<summary>") == len(ids)
    for block, topic_id in zip(page.details, ids, strict=True):
        topic = kb.topics[topic_id]
        assert "open" not in block["attrs"], topic_id  # closed by default
        assert block["summary"] == topic.title
        assert topic.audience_summary in block["text"]
        for fact in topic.facts:
            markers = " ".join(f"[{kb.sources[c].cite}]" for c in fact.citations)
            assert f"{fact.text} {markers}" in block["text"], (topic_id, fact.text[:40])
        for table in topic.tables:
            assert table.title in block["text"] and all(c in block["text"] for c in table.columns)
    # Nothing from the other topics: no facts, summaries or tables; their titles only inside a "See also".
    others = [t for t in kb.topics.values() if t.id not in ids]
    plain = html.unescape(text)
    for topic in others:
        assert topic.audience_summary not in plain, topic.id
        assert not any(fact.text in plain for fact in topic.facts), topic.id
        for line in plain.splitlines():
            if topic.title in line:
                assert line.startswith("<p>See also in the Work-up guide tab: "), (topic.id, line)
    assert page.ids == []  # no id: it can share a page with the linked full guide
    assert not INTERNAL_NAMES.search(text)


def test_collapsible_html_starts_with_the_note_points_to_the_guide_and_ends_with_the_sources(kb):
    ids = topics_for_differential(["neuroendocrine_metastasis"])
    text = render_collapsible_html(kb, ids)
    page = parse_html(text)
    before = "".join(page.outside).split(kb.topics[ids[0]].title)[0]
    assert before.strip().startswith(NOTE)  # the educational-guidance note comes first
    assert "the Work-up guide tab shows every topic" in before and f"{len(ids)} work-up topics" in before
    assert text.index("guidance-sources") > text.rindex("</details>")
    cited = kb.cited_source_ids(ids)
    assert [entry.split("]", 1)[0] + "]" for entry in page.sources] == [f"[{kb.sources[i].cite}]" for i in cited]
    for entry, source_id in zip(page.sources, cited, strict=True):
        assert kb.sources[source_id].label in entry
    # Every marker in the topics resolves to an entry in the list, and nothing else is listed.
    markers = set(re.findall(r"\[([^\[\]]+)\]", " ".join(block["text"] for block in page.details)))
    assert markers == {kb.sources[i].cite for i in cited}
    uncited = set(kb.sources) - set(cited)
    assert uncited and not any(kb.sources[i].cite in html.unescape(text) for i in uncited)
    other = render_collapsible_html(kb, ["biopsy"], full_guide="the full guide below")
    assert "the full guide below shows every topic" in other and "1 work-up topic for" in other


def test_collapsible_html_escapes_all_text(tmp_path):
    hostile = '<script>alert("x")</script> & <b>bold</b>'
    sources = SOURCES_YAML.replace("title: A page", f"title: '{hostile}'").replace(
        "reference: Someone et al., Journal 2000", "reference: 'Someone <i>et al.</i>, J & J 2000'"
    )
    topic = (
        GOOD_TOPIC.replace("title: Alpha", "title: 'Alpha <img src=x onerror=alert(1)>'")
        .replace("One sentence.", "'One \"quoted\" sentence <u>.</u>'")
        .replace("text: A fact.", f"text: '{hostile}'")
    )
    topic += textwrap.dedent(
        """
        tables:
          - title: "<th>T</th>"
            columns: ["<a href='javascript:x'>a</a>", b]
            rows:
              - cells: ["x < y", "y > z"]
                citations: [L1]
        """
    )
    kb = load_guidance(write_kb(tmp_path, {"01_alpha.yaml": topic}, sources=sources))
    text = render_collapsible_html(kb, ["alpha"])
    for raw in ("<script", "<b>", "<img", "<i>", "<u>", "<th>T", "<a ", "javascript:x'>", "x < y", "y > z"):
        assert raw not in text, raw
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "Someone &lt;i&gt;et al.&lt;/i&gt;, J &amp; J 2000" in text and "x &lt; y" in text
    page = parse_html(text)
    assert page.details[0]["summary"] == "Alpha <img src=x onerror=alert(1)>"
    assert hostile in page.details[0]["text"]


def test_collapsible_html_for_no_topics_is_empty_and_unknown_topics_are_errors(kb):
    assert render_collapsible_html(kb, []) == ""
    assert render_collapsible_html(kb, topics_for_differential(["benign"])) == ""
    with pytest.raises(GuidanceError, match="no_such_topic"):
        render_collapsible_html(kb, ["biopsy", "no_such_topic"])
    assert parse_html(render_collapsible_html(kb, ["biopsy", "biopsy"])).details[0]["attrs"]["data-topic"] == "biopsy"
    assert render_collapsible_html(kb, ["biopsy", "biopsy"]).count("<details") == 1


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


# --- one test per work-up pathway: what is shown, and what is not


def _shown_for(key: str) -> tuple[list[str], str]:
    ids = topics_for_differential([key])
    return ids, render_markdown(load_guidance(), topics=ids, include_sources=False) if ids else ""


def test_mapping_keys_are_the_referral_engines_work_up_pathways():
    assert set(DIFFERENTIAL_TOPICS) == {*WORKUPS, "benign"}  # one list of pathways: the engine's
    for key, topics in DIFFERENTIAL_TOPICS.items():
        assert len(topics) == len(set(topics)), key
        assert set(topics) <= set(topic_ids()), key


def test_suspected_mcc_shows_the_mcc_work_up():
    ids, text = _shown_for("suspected_mcc")
    assert ids == [
        "aeiou",
        "mcc_epidemiology",
        "biopsy",
        "mcc_biopsy_and_referral",
        "immunohistochemistry",
        "mcc_staging",
        "nodal_staging",
        "pitfalls",
    ]
    assert not set(ids) & NET_ONLY_TOPICS
    for needle in ("AJCC 8th edition", "FDG-PET/CT", "sentinel lymph node biopsy is recommended", "subcutis"):
        assert needle in text, needle
    assert "suspected-cancer pathway" in text and "skin-cancer multidisciplinary team" in text
    assert "5-HIAA" not in text and "DOTATATE" not in text


def test_mcc_recurrence_shows_biopsy_imaging_and_ihc_but_no_net_biochemistry():
    ids, text = _shown_for("mcc_recurrence")
    assert ids == ["mcc_recurrence", "biopsy", "immunohistochemistry", "pitfalls"]
    assert not set(ids) & NET_ONLY_TOPICS
    assert "FDG-PET/CT" in text and "| Marker | MCC |" in text and "40%" in text
    # 5-HIAA is named only to say that it has no role in MCC.
    for line in text.splitlines():
        if "5-HIAA" in line:
            assert "no role" in line, line
    assert "DOTATATE" not in text and "somatostatin-receptor" not in text.lower()


def test_metastasis_shows_the_primary_led_work_up_without_neuroendocrine_tests():
    ids, text = _shown_for("metastasis")
    assert ids == ["biopsy", "metastasis_workup", "cutaneous_metastasis"]
    assert not set(ids) & NET_ONLY_TOPICS
    assert "chosen for the known or suspected primary" in text and "compared with" in text
    assert "CT, or FDG-PET/CT" in text and "Sister Mary Joseph" in text and "4,020" in text
    assert "only when a neuroendocrine tumour is known or suspected" in text
    for absent in ("5-HIAA", "chromogranin", "DOTATATE", "Ki-67"):
        assert absent.lower() not in text.lower(), absent


def test_neuroendocrine_metastasis_adds_the_neuroendocrine_tests():
    ids, text = _shown_for("neuroendocrine_metastasis")
    assert ids[:3] == list(DIFFERENTIAL_TOPICS["metastasis"])
    assert set(ids) >= NET_ONLY_TOPICS and "immunohistochemistry" in ids
    for needle in ("Chromogranin A", "5-HIAA", "Ga-68 DOTATATE PET/CT", "2 mm²", "Pellagra", "glucagonoma"):
        assert needle in text, needle


@pytest.mark.parametrize("key", ["other_malignant", "cannot_assess"])
def test_other_malignant_and_cannot_assess_show_the_general_biopsy_only(key):
    ids, text = _shown_for(key)
    assert ids == ["biopsy"]
    assert "subcutis" in text
    for absent in ("synaptophysin", "chromogranin", "5-HIAA", "NSE", "DOTATATE"):
        assert absent.lower() not in text.lower(), absent


def test_benign_shows_nothing():
    assert topics_for_differential(["benign"]) == []


def test_topics_for_differential_is_ordered_without_duplicates():
    ids = topics_for_differential(["suspected_mcc", "neuroendocrine_metastasis"])
    assert len(ids) == len(set(ids))
    assert ids[: len(DIFFERENTIAL_TOPICS["suspected_mcc"])] == list(DIFFERENTIAL_TOPICS["suspected_mcc"])
    assert set(ids) >= NET_ONLY_TOPICS and set(ids) <= set(topic_ids())
    assert topics_for_differential(["cannot_assess", "other_malignant"]) == ["biopsy"]
    assert topics_for_differential("metastasis") == list(DIFFERENTIAL_TOPICS["metastasis"])
    assert topics_for_differential([" Suspected_MCC "]) == list(DIFFERENTIAL_TOPICS["suspected_mcc"])
    assert topics_for_differential([]) == []
    with pytest.raises(GuidanceError, match="neuroendocrine_metastasis"):
        topics_for_differential(["melanoma"])
    with pytest.raises(GuidanceError, match="'mcc'"):  # the old triage-group keys are gone
        topics_for_differential(["mcc"])


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
    # Without a 'cite', the marker is the publisher and title of a page, the reference up to its ';' otherwise.
    assert kb.sources["S1"].cite == "A publisher, 'A page'"
    assert kb.sources["L1"].cite == "Someone et al., Journal 2000"
    named = SOURCES_YAML.replace("reference: Someone et al., Journal 2000", "reference: Someone et al., J 2000;1:2-3")
    assert load_guidance(write_kb(tmp_path / "cut", {"01_alpha.yaml": GOOD_TOPIC}, sources=named)).sources[
        "L1"
    ].cite == ("Someone et al., J 2000")
    named = named.replace("    title: A paper\n", '    title: A paper\n    cite: "Project review 2026: a topic"\n')
    cites_l1 = GOOD_TOPIC.replace("citations: [S1]", "citations: [L1, S1]")
    other = load_guidance(write_kb(tmp_path / "named", {"01_alpha.yaml": cites_l1}, sources=named))
    assert other.sources["L1"].cite == "Project review 2026: a topic"
    assert "- A fact. [Project review 2026: a topic] [A publisher, 'A page']" in render_markdown(other)


def test_unknown_citation_names_file_and_field(tmp_path):
    topic = GOOD_TOPIC + "  - text: Second fact.\n    citations: [S1, NOPE]\n"
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError) as error:
        load_guidance(tmp_path)
    message = str(error.value)
    assert f"{tmp_path / 'topics' / '01_alpha.yaml'}: facts.1.citations: unknown citation id 'NOPE'" in message
    assert "known source ids: S1, L1" in message


def test_unknown_citation_in_a_table_row_names_the_row(tmp_path):
    table = (
        "tables:\n  - title: T\n    columns: [a, b]\n    rows:\n      - cells: [x, y]\n        citations: [L1, NOPE]\n"
    )
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + table})
    with pytest.raises(
        GuidanceError, match=r"01_alpha\.yaml: tables\.0\.rows\.0\.citations: unknown citation id 'NOPE'"
    ):
        load_guidance(tmp_path)


@pytest.mark.parametrize("citations", ["", "    citations: []\n"])
def test_fact_without_citation_is_rejected(tmp_path, citations):
    topic = GOOD_TOPIC + "  - text: Uncited fact.\n" + citations
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: facts\.1\.citations: has no citation"):
        load_guidance(tmp_path)


def test_duplicate_topic_id_is_rejected(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC, "02_again.yaml": GOOD_TOPIC})
    with pytest.raises(GuidanceError, match=r"02_again\.yaml: id: duplicate topic id 'alpha'.*01_alpha\.yaml"):
        load_guidance(tmp_path)


def test_unknown_related_topic_is_rejected(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + "related: [beta]\n"})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: related\.0: unknown related topic 'beta'"):
        load_guidance(tmp_path)


def test_topic_listing_itself_as_related_is_rejected(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + "related: [alpha]\n"})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: related\.0: topic 'alpha' lists itself as related"):
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
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: tables\.0: rows\.1\.cells has 2 cells .* 3 columns"):
        load_guidance(tmp_path)


def test_table_row_without_citation_is_rejected(tmp_path):
    table = "tables:\n  - title: T\n    columns: [a, b]\n    rows:\n      - cells: [x, y]\n"
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC + table})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: tables\.0\.rows\.0\.citations: has no citation"):
        load_guidance(tmp_path)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        (GOOD_TOPIC.replace("title: Alpha\n", ""), "01_alpha.yaml: title: Field required"),
        (
            GOOD_TOPIC.replace("audience_summary: One sentence.\n", ""),
            "01_alpha.yaml: audience_summary: Field required",
        ),
        (GOOD_TOPIC.replace("  - text: A fact.\n", "  - txt: A fact.\n"), "01_alpha.yaml: facts.0.txt: Extra inputs"),
        ("id: alpha\ntitle: A\naudience_summary: B.\n", "01_alpha.yaml: facts: Field required"),
        ("id: alpha\ntitle: A\naudience_summary: B.\nfacts: []\n", "01_alpha.yaml: facts: needs at least 1 fact"),
        (GOOD_TOPIC.replace("id: alpha", "id: Alpha-Topic"), "01_alpha.yaml: id: topic id must be snake_case"),
        (GOOD_TOPIC.replace("title: Alpha", "title: '  '"), "01_alpha.yaml: title: is empty"),
        ("- id: alpha\n", "01_alpha.yaml: Input should be a valid dictionary"),
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
        (("    publisher: A publisher\n", ""), "sources.0.document.publisher: Field required"),
        (("    via: clinical_facts.md\n", ""), "sources.1.literature.via: Field required"),
        (("    reference: Someone et al., Journal 2000\n", ""), "sources.1.literature.reference: Field required"),
        (("kind: literature", "kind: blog"), "sources.1: Input tag 'blog' found using 'kind' does not match"),
        (("id: L1", "id: S1"), "sources.1.id: duplicate source id 'S1'"),
        (('pmid: "123"', "pmid: PMID123"), "sources.1.literature.pmid: pmid must be digits, got 'PMID123'"),
        (("    title: A paper\n", "    title: A paper\n    cite: A publisher, 'A page'\n"), "is also source 'S1'"),
        (("    title: A paper\n", "    title: A paper\n    cite: Someone [2000]\n"), "may not contain '['"),
        (("    title: A paper\n", "    title: A paper\n    cite: See clinical_facts.md\n"), "literature.cite: names"),
        (
            ("    title: A paper\n", "    title: A paper\n    citation: x\n"),
            "sources.1.literature.citation: Extra inputs",
        ),
        ((SOURCES_YAML, "sources: []\n"), "sources: needs at least 1 source, got 0"),
    ],
)
def test_broken_sources_are_rejected(tmp_path, edit, problem):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC}, sources=SOURCES_YAML.replace(*edit))
    with pytest.raises(GuidanceError, match=r"sources\.yaml") as error:
        load_guidance(tmp_path)
    assert problem in str(error.value)


TABLE = "tables:\n  - title: T\n    columns: [a, b]\n    rows:\n      - cells: [x, y]\n        citations: [L1]\n"


@pytest.mark.parametrize(
    ("topic", "field", "problem"),
    [
        # an unknown key, at the top and inside a fact (a misspelt 'citations' also leaves the fact uncited)
        (GOOD_TOPIC + "sumary: Misspelt.\n", "sumary", "Extra inputs are not permitted"),
        (GOOD_TOPIC.replace("citations: [S1]", "citation: [S1]"), "facts.0.citation", "Extra inputs are not permitted"),
        (GOOD_TOPIC.replace("citations: [S1]", "citation: [S1]"), "facts.0.citations", "has no citation"),
        (
            GOOD_TOPIC + TABLE.replace("citations: [L1]", "citations: [L1]\n        note: x"),
            "tables.0.rows.0.note",
            "Extra",
        ),
        # a wrong type
        (GOOD_TOPIC.replace("title: Alpha", "title: [Al, pha]"), "title", "Input should be a valid string, got list"),
        (GOOD_TOPIC.replace("text: A fact.", "text: 1.5"), "facts.0.text", "Input should be a valid string, got float"),
        (GOOD_TOPIC + "related: biopsy\n", "related", "Input should be a valid tuple, got str"),
        (
            GOOD_TOPIC + TABLE.replace("[x, y]", "[[x], y]"),
            "tables.0.rows.0.cells.0",
            "Input should be a valid string, got list",
        ),
        # a missing citation, on a fact and on a table row
        (GOOD_TOPIC.replace("    citations: [S1]\n", ""), "facts.0.citations", "has no citation"),
        (
            GOOD_TOPIC + TABLE.replace("citations: [L1]", "citations: []"),
            "tables.0.rows.0.citations",
            "has no citation",
        ),
    ],
)
def test_schema_errors_name_the_file_and_the_dotted_field(tmp_path, topic, field, problem):
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError) as error:
        load_guidance(tmp_path)
    lines = str(error.value).splitlines()  # one line per problem, each "<file>: <field>: <problem>"
    assert all(line.startswith(f"{tmp_path / 'topics' / '01_alpha.yaml'}: ") for line in lines), lines
    assert any(line.startswith(f"{tmp_path / 'topics' / '01_alpha.yaml'}: {field}: {problem}") for line in lines), lines


def test_numbers_in_text_fields_are_read_as_text(tmp_path):
    topic = GOOD_TOPIC + TABLE.replace("[x, y]", "[7, y]")
    sources = SOURCES_YAML.replace('pmid: "123"', "pmid: 123")
    kb = load_guidance(write_kb(tmp_path, {"01_alpha.yaml": topic}, sources=sources))
    assert kb.topics["alpha"].tables[0].rows[0].cells == ("7", "y") and kb.sources["L1"].pmid == "123"


def test_loaded_records_are_read_only(kb):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        kb.topics["biopsy"].title = "Changed"  # type: ignore[misc]


def test_invalid_yaml_names_the_file(tmp_path):
    write_kb(tmp_path, {"01_alpha.yaml": "id: [unclosed\n"})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: not valid YAML"):
        load_guidance(tmp_path)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (
            ("Someone et al., Journal 2000", "Someone et al., via clinical_facts.md"),
            "sources.1.literature.reference: names the internal file",
        ),
        (("title: A page", "title: A page (000_a991662f92536825.txt)"), "sources.0.document.title: names the internal"),
    ],
)
def test_internal_file_names_in_shown_source_fields_are_rejected(tmp_path, edit, where):
    write_kb(tmp_path, {"01_alpha.yaml": GOOD_TOPIC}, sources=SOURCES_YAML.replace(*edit))
    with pytest.raises(GuidanceError, match=r"sources\.yaml") as error:
        load_guidance(tmp_path)
    assert where in str(error.value) and "internal file" in str(error.value)


def test_internal_file_names_in_topic_text_are_rejected(tmp_path):
    topic = GOOD_TOPIC.replace("A fact.", "A fact (see 001_460af97a28b409ee.txt).")
    write_kb(tmp_path, {"01_alpha.yaml": topic})
    with pytest.raises(GuidanceError, match=r"01_alpha\.yaml: facts\.0\.text: names the internal file"):
        load_guidance(tmp_path)
