"""The guidance data as typed records: pydantic models that mirror ``sources.yaml`` and ``topics/*.yaml``.

The models are the schema: which fields an entry has, which are required (a page needs its publisher and
file, a publication its reference and the fact sheet it came through), which text a clinician sees (and so
may not name an internal file), and that every fact and table row cites at least one source. Unknown keys
are errors (``extra="forbid"``), because a misspelt ``citation:`` would otherwise drop a citation silently
and turn a sourced statement into an unsourced one. What one file cannot know stays as small explicit
checks in the loader: every cited id is a source, source ids and citation names are unique, topic ids are
unique and every related topic exists.

Every error names the YAML file and the dotted location of the field in it, as pydantic reports it
(``topics/03_biopsy.yaml: facts.4.citations: ...``; indices count from 0; a source's location includes its
kind, ``sources.2.literature.reference``), so an author can go straight to the line.
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from skintriage.common.errors import SkintriageError

GUIDANCE_DIR = Path(__file__).resolve().parent

# Internal names that must never reach a clinician: the fact sheet's file name and the copied pages'
# file names (NNN_<16 hex digits>.txt). Checked on every field that is rendered.
_INTERNAL_NAME = re.compile(r"clinical_facts\.md|\b\d{3}_[0-9a-f]{16}\.txt\b", re.IGNORECASE)
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TOPIC_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class GuidanceError(SkintriageError, ValueError):
    """The guidance data is invalid, or a caller asked for a topic or differential that does not exist."""


# --------------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------------


def _number_as_text(value: Any) -> Any:
    """YAML reads ``7`` as a number; in a text field (a table cell, a PMID) it means the text "7"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _one_line(text: str) -> str:
    """Folded YAML keeps line breaks and runs of spaces; the renderers want one line with single spaces."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("is empty")
    return text


def _not_internal(text: str) -> str:
    if found := _INTERNAL_NAME.search(text):
        raise ValueError(
            f"names the internal file {found.group(0)!r}, which clinicians must not see; cite the source by id "
            "and keep file names in the source's 'file'/'via' fields"
        )
    return text


def _rule(test: Callable[[str], object], problem: str) -> AfterValidator:
    def check(text: str) -> str:
        if not test(text):
            raise ValueError(f"{problem}, got {text!r}")
        return text

    return AfterValidator(check)


def _at_least(n: int, what: str) -> AfterValidator:
    """A minimum length checked after the entries: pydantic's ``min_length`` would also fire, as a second error,
    when the only entry is invalid."""

    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(values) < n:
            raise ValueError(f"needs at least {n} {what}, got {len(values)}")
        return values

    return AfterValidator(check)


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _cited(ids: tuple[str, ...]) -> tuple[str, ...]:
    if not ids:
        raise ValueError("has no citation (every fact and table row needs at least one source id)")
    return tuple(dict.fromkeys(ids))


Text = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_one_line)]
ShownText = Annotated[Text, AfterValidator(_not_internal)]  # rendered to clinicians
SourceId = Annotated[Text, _rule(_ID_PATTERN.match, "must be letters, digits, '-' or '_'")]
TopicId = Annotated[Text, _rule(_TOPIC_ID_PATTERN.match, "topic id must be snake_case")]
Pmid = Annotated[Text, _rule(str.isdigit, "pmid must be digits")]
# Source ids, in order without repeats; a single id may be given without brackets. Defaults to none so that a
# missing list gets the same message as an empty one; that every id is a source is checked by the loader.
Citations = Annotated[tuple[Text, ...], BeforeValidator(_one_or_many), AfterValidator(_cited)]
_CITATIONS = Field(default=(), validate_default=True)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Model = TypeVar("_Model", bound=_Record)


# --------------------------------------------------------------------------------------------------
# sources.yaml
# --------------------------------------------------------------------------------------------------


class Source(_Record):
    """One citable source: a copied web page (``DocumentSource``) or a publication (``LiteratureSource``).

    ``file`` and ``via`` are provenance for tests and audits, never shown; ``cite`` (``cite_as`` here) is the
    optional marker name of sources.yaml.
    """

    id: SourceId
    kind: Literal["document", "literature"]
    title: ShownText
    publisher: ShownText | None = None
    file: Text | None = None
    reference: ShownText | None = None
    pmid: Pmid | None = None
    url: Text | None = None
    via: Text | None = None
    reliability_note: ShownText | None = None
    cite_as: ShownText | None = Field(default=None, alias="cite")

    @property
    def cite(self) -> str:
        """The name a clinician recognises, used as the citation marker and to head the source-list entry.

        The ``cite`` of sources.yaml where given (the fact sheet's own statements, e.g. "Clinical review 2026
        (fact sheet): biopsy", and pages whose title is too long for a marker); otherwise publisher and
        title for a page ("NeuroEndocrine Cancer Australia (NECA), 'Skin Changes and NETs'") and the
        reference up to its volume for literature ("Heath et al., J Am Acad Dermatol 2008"). Never the id:
        ids such as ``CF-biopsy`` read as internal.
        """
        return self.cite_as or self._default_cite()

    @abstractmethod
    def _default_cite(self) -> str: ...

    @property
    @abstractmethod
    def label(self) -> str:
        """A one-line citation for clinicians: publisher and title for a page; reference and PMID otherwise.

        Never the internal file name or the fact sheet it came through (those stay in ``file``/``via``).
        """

    @model_validator(mode="after")
    def _marker_is_one_bracketed_name(self) -> Self:
        # The marker is how a reader finds the source in the list: it must stay one marker in brackets.
        if "[" in self.cite or "]" in self.cite:
            raise ValueError(f"citation name {self.cite!r} may not contain '[' or ']' (it is shown in brackets)")
        return self


class DocumentSource(Source):
    """A copy of a public web page in ``../shared/documents``, named by file, title and publisher."""

    kind: Literal["document"]
    publisher: ShownText
    file: Text

    def _default_cite(self) -> str:
        return f"{self.publisher}, '{self.title}'"

    @property
    def label(self) -> str:
        return f'{self.publisher}: "{self.title}" (web page)'


class LiteratureSource(Source):
    """A publication named in the fact sheet (``via``), with ``reference`` exactly as far as it gives it."""

    kind: Literal["literature"]
    reference: ShownText
    via: Text

    def _default_cite(self) -> str:
        return self.reference.split(";", 1)[0].strip()

    @property
    def label(self) -> str:
        pmid = f", PMID {self.pmid}" if self.pmid else ""
        return f"{self.reference}{pmid}"


class _SourcesFile(_Record):
    sources: Annotated[
        tuple[Annotated[DocumentSource | LiteratureSource, Field(discriminator="kind")], ...], _at_least(1, "source")
    ]


# --------------------------------------------------------------------------------------------------
# topics/*.yaml
# --------------------------------------------------------------------------------------------------


class Fact(_Record):
    """One statement in the project's own words, with the ids of the sources that support it."""

    text: ShownText
    citations: Citations = _CITATIONS


class TableRow(_Record):
    cells: tuple[ShownText, ...]
    citations: Citations = _CITATIONS


class Table(_Record):
    """A structured table (e.g. the IHC panel MCC vs metastasis); every row carries its own citations."""

    title: ShownText
    columns: Annotated[tuple[ShownText, ...], _at_least(2, "column names")]
    rows: Annotated[tuple[TableRow, ...], _at_least(1, "row")]

    @model_validator(mode="after")
    def _rows_fill_the_columns(self) -> Self:
        for index, row in enumerate(self.rows):
            if len(row.cells) != len(self.columns):
                raise ValueError(
                    f"rows.{index}.cells has {len(row.cells)} cells but the table has {len(self.columns)} columns "
                    f"{list(self.columns)}"
                )
        return self


class Topic(_Record):
    """One topic file: a short summary for the reader, cited facts, optional tables and related topic ids."""

    id: TopicId
    title: ShownText
    audience_summary: ShownText
    facts: Annotated[tuple[Fact, ...], _at_least(1, "fact")]
    tables: tuple[Table, ...] = ()
    related: tuple[TopicId, ...] = ()

    def citation_sites(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """Each cited statement's field in the topic file (``facts.0.citations``) with its source ids."""
        for index, fact in enumerate(self.facts):
            yield f"facts.{index}.citations", fact.citations
        for table_index, table in enumerate(self.tables):
            for index, row in enumerate(table.rows):
                yield f"tables.{table_index}.rows.{index}.citations", row.citations


@dataclass(frozen=True)
class KnowledgeBase:
    """All sources by id and all topics by id, in display order. Read-only: the default one is cached."""

    sources: Mapping[str, Source]
    topics: Mapping[str, Topic]

    def cited_source_ids(self, topics: Iterable[str] | None = None) -> list[str]:
        """Ids of the sources cited by the given topics (all by default), in sources.yaml order."""
        chosen = self.topics.values() if topics is None else [self.topics[t] for t in topics]
        cited = {source_id for topic in chosen for _, ids in topic.citation_sites() for source_id in ids}
        return [source_id for source_id in self.sources if source_id in cited]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_guidance(path: Path | None = None) -> KnowledgeBase:
    """Load and validate the knowledge base from ``path`` (a folder with sources.yaml and topics/).

    Without a path the packaged guidance is loaded once and cached, because the app renders it on every
    request. An explicit path is read fresh each time (tests and authors editing the data).
    """
    if path is None:
        return _load_default()
    return _load(Path(path))


@functools.lru_cache(maxsize=1)
def _load_default() -> KnowledgeBase:
    return _load(GUIDANCE_DIR)


def topic_ids() -> list[str]:
    """The ids of the packaged topics in display order, e.g. for a CLI choice or an API schema."""
    return list(load_guidance().topics)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise GuidanceError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise GuidanceError(f"{path}: not valid YAML: {error}") from error


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "value_error":  # our own checks: their message without pydantic's "Value error, "
        return str(error["ctx"]["error"])
    if error["type"].endswith("_type"):  # a wrong type: say what was given
        return f"{error['msg']}, got {type(error['input']).__name__}"
    return error["msg"]


def _parse(model: type[_Model], path: Path) -> _Model:
    """``path`` read into ``model``; every schema error as one line "<file>: <dotted field>: <problem>"."""
    try:
        return model.model_validate(_read_yaml(path))
    except ValidationError as error:
        lines = []
        for problem in error.errors(include_url=False):
            where = ".".join(str(part) for part in problem["loc"])
            lines.append(f"{path}: {where + ': ' if where else ''}{_message(problem)}")
        raise GuidanceError("\n".join(lines)) from error


def _load_sources(path: Path) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    cites: dict[str, str] = {}
    for index, source in enumerate(_parse(_SourcesFile, path).sources):
        where = f"{path}: sources.{index}"
        if source.id in sources:
            raise GuidanceError(f"{where}.id: duplicate source id {source.id!r}")
        if source.cite in cites:
            raise GuidanceError(
                f"{where}.cite: citation name {source.cite!r} is also source {cites[source.cite]!r}'s; give one of "
                "them a distinct 'cite'"
            )
        sources[source.id] = source
        cites[source.cite] = source.id
    return sources


def _load(folder: Path) -> KnowledgeBase:
    sources = _load_sources(folder / "sources.yaml")
    topic_files = sorted((folder / "topics").glob("*.yaml"))
    if not topic_files:
        raise GuidanceError(f"{folder / 'topics'}: no topic files (*.yaml)")
    topics: dict[str, Topic] = {}
    files: dict[str, Path] = {}
    for path in topic_files:
        topic = _parse(Topic, path)
        for where, cited in topic.citation_sites():
            if unknown := [c for c in cited if c not in sources]:
                raise GuidanceError(
                    f"{path}: {where}: unknown citation id {unknown[0]!r}; known source ids: {', '.join(sources)}"
                )
        if topic.id in topics:
            raise GuidanceError(f"{path}: id: duplicate topic id {topic.id!r} (already defined in {files[topic.id]})")
        topics[topic.id] = topic
        files[topic.id] = path
    for topic in topics.values():
        for index, related in enumerate(topic.related):
            where = f"{files[topic.id]}: related.{index}"
            if related == topic.id:
                raise GuidanceError(f"{where}: topic {topic.id!r} lists itself as related")
            if related not in topics:
                raise GuidanceError(f"{where}: unknown related topic {related!r}; known topic ids: {', '.join(topics)}")
    return KnowledgeBase(sources=MappingProxyType(sources), topics=MappingProxyType(topics))
