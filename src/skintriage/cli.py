"""The ``skintriage`` command line: a thin shell over the library (no logic lives here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from skintriage import DISCLAIMER
from skintriage.common.errors import ArgumentError, InsufficientDataError, SkintriageError
from skintriage.common.paths import DEFAULT_BUNDLE

# Only typer, rich, the package's light __init__, common.errors and the pathlib-only common.paths are imported here: the
# library modules (torch, timm, pandas, albumentations, ...) are imported inside the commands that use them,
# so that `--help`, `guidance` and `data list` start in well under a second (experiments/cli_startup).
# Nothing evaluated at import time (the options' defaults and help texts below) may import them;
# tests/cli/test_cli_startup.py checks that importing this module loads neither torch nor gradio, and that the
# constant copied here still equals the library's.

# = skintriage.data.splits.SPLIT_STRATEGIES, without importing pandas for a help text.
SPLIT_STRATEGIES = ("project", "official", "naive")

app = typer.Typer(help=f"skintriage: skin-lesion triage research prototype. {DISCLAIMER}", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: list, fetch, summarize and audit the supported sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

SourceName = Annotated[str, typer.Argument(help="Registered source name (see `skintriage data list`).")]
Root = Annotated[Path, typer.Option("--root", help="Folder the dataset was unpacked into.")]
Metadata = Annotated[Path | None, typer.Option("--metadata", help="Metadata file to read instead of the default.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the project split.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
HashImages = Annotated[
    bool, typer.Option("--hash-images/--no-hash-images", help="Group and audit identical/near-identical images.")
]
Split = Annotated[str, typer.Option("--split", help=f"Split strategy: {', '.join(SPLIT_STRATEGIES)}.")]
Checkpoint = Annotated[Path, typer.Option("--checkpoint", help="Model bundle folder (model.json + model.safetensors).")]


def _fail(error: SkintriageError) -> None:
    """Report a user error (see :mod:`skintriage.common.errors`) as one ``error: ...`` line and exit 1.

    Commands catch :class:`SkintriageError` only: any other exception is a bug and keeps its traceback.
    """
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _load_and_split(source_name: str, root: Path, metadata: Path | None, split: str, seed: int, hash_all: bool):
    from skintriage.data.sources import get_source
    from skintriage.data.splits import hash_images, split_manifest

    source = get_source(source_name)
    manifest = source.load(root, metadata=metadata, on_missing="report", progress=True)
    hashes = hash_images(manifest, progress=True) if hash_all else None
    split_manifest_, policy = split_manifest(
        manifest, strategy=split, fractions=source.split_fractions, seed=seed, hashes=hashes
    )
    return split_manifest_, hashes, policy


@data_app.command("list")
def data_list(as_json: AsJson = False) -> None:
    """Every registered source: what it is, its licence and how to obtain it."""
    from skintriage.data.sources import SOURCES

    if as_json:
        rows = [
            {
                "name": s.name,
                "title": s.title,
                "description": s.description,
                "licence": s.licence,
                "citation": s.citation,
                "acquisition": s.acquisition,
                "label_map": s.label_map,
                "obtain": s.obtain,
                "fetch": s.fetch is not None,
            }
            for s in SOURCES.values()
        ]
        console.print_json(json.dumps(rows))
        return
    # Rich wraps at the console width (80 columns when piped), which breaks URLs and commands across lines.
    # The steps to obtain a source (where the URLs are) are never wrapped; piped, nothing is (a reader or grep
    # gets each line whole); in a terminal, descriptions still wrap at word boundaries.
    plain = not console.is_terminal
    for source in sorted(SOURCES.values(), key=lambda s: s.name):
        console.rule(f"[bold]{source.name}[/]: {source.title}", align="left")
        console.print(source.description, highlight=False, soft_wrap=plain)
        console.print(f"[bold]licence:[/] {source.licence}", highlight=False, soft_wrap=plain)
        console.print(f"[bold]acquisition:[/] {source.acquisition or 'per image'}", highlight=False, soft_wrap=plain)
        console.print("[bold]how to obtain it:[/]", highlight=False)
        console.print(source.obtain, highlight=False, markup=False, soft_wrap=True)
        if source.fetch:
            console.print(f"  or: skintriage data fetch {source.name} --dest DIR", highlight=False, soft_wrap=True)
        console.print()


@data_app.command("summarize")
def data_summarize(
    source: SourceName,
    root: Root,
    metadata: Metadata = None,
    split: Split = "project",
    seed: Seed = 0,
    hash_all: HashImages = True,
    as_json: AsJson = False,
) -> None:
    """Counts per split x diagnosis x triage group, lesion/patient groups and missing files."""
    from rich.table import Table

    from skintriage.data.splits import audit_leakage
    from skintriage.data.summary import summarize_manifest

    try:
        manifest, hashes, policy = _load_and_split(source, root, metadata, split, seed, hash_all)
        summary = summarize_manifest(manifest, leakage=audit_leakage(manifest, hashes), split_policy=policy)
    except SkintriageError as error:
        _fail(error)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{source}: {summary['n_images']} images under {root}")
    split_names = list(summary["splits"])
    table.add_column("triage group")
    table.add_column("diagnosis")
    for name in split_names:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    groups = {label["diagnosis"]: label["triage_group"] for label in summary["labels"].values()}
    for diagnosis in sorted(summary["diagnosis"], key=lambda d: (groups[d], d)):
        cells = [str(summary["splits"][name]["diagnosis"].get(diagnosis, 0)) for name in split_names]
        table.add_row(groups[diagnosis], diagnosis, *cells, str(summary["diagnosis"][diagnosis]))
    console.print(table)
    console.print(f"groups: {summary['groups']}")
    console.print(f"split: {summary['split_policy']}")
    if summary["missing_images"]:
        console.print(f"[yellow]{summary['missing_images']} images missing[/], e.g. {summary['missing_examples'][:3]}")


@data_app.command("audit")
def data_audit(
    source: SourceName,
    root: Root,
    metadata: Metadata = None,
    split: Split = "project",
    seed: Seed = 0,
    hash_all: HashImages = True,
    as_json: AsJson = False,
) -> None:
    """Leakage audit: lesions, patients and (near-)identical images that appear in more than one split.

    Exits with status 2 when anything leaks, so that scripts can gate on it.
    """
    from skintriage.data.splits import audit_leakage

    try:
        manifest, hashes, policy = _load_and_split(source, root, metadata, split, seed, hash_all)
        report = audit_leakage(manifest, hashes)
    except SkintriageError as error:
        _fail(error)
    result = {
        "source": source,
        "split_policy": policy,
        "missing_images": len(manifest.missing_images),
        **report.to_dict(),
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(f"{source}: split {policy['strategy']} {report.split_sizes}")
        console.print(f"  lesions in more than one split:  {len(report.shared_lesions)}")
        console.print(f"  patients in more than one split: {len(report.shared_patients)}")
        console.print(f"  byte-identical images across splits: {len(report.identical_images)}")
        console.print(f"  near-identical images across splits: {len(report.near_identical_images)}")
        if report.images_not_hashed:
            console.print(f"  images not hashed (missing or unreadable): {report.images_not_hashed}")
        for lesion, splits in list(report.shared_lesions.items())[:5]:
            console.print(f"  e.g. lesion {lesion} in {', '.join(splits)}")
    if report.leaks:
        raise typer.Exit(code=2)


@data_app.command("fetch")
def data_fetch(
    source: SourceName,
    dest: Annotated[Path, typer.Option("--dest", help="Folder to download into.")] = Path("data/downloads"),
) -> None:
    """Download a dataset where a scripted download exists, or print the exact manual steps."""
    from skintriage.data.sources import FetchError, get_source

    try:
        chosen = get_source(source)
        if chosen.fetch is None:
            raise FetchError(f"{source} has no scripted download. To obtain it:\n{chosen.obtain}")
        chosen.fetch(dest / source)
    except SkintriageError as error:
        _fail(error)
    console.print(f"{source} downloaded into {dest / source}")


@app.command("train")
def train_command(
    config_path: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/benchmark_cpu.yaml.")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<config name>).")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Overrides the config's data_root.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Overrides the config's epochs.")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a top-level field, e.g. --set imbalance=sampler (value read as YAML)."),
    ] = None,
) -> None:
    """Train, calibrate and evaluate a model; rerun the same command to resume an interrupted run."""
    from skintriage.training.config import load_config, parse_overrides
    from skintriage.training.loop import train

    try:
        config = load_config(config_path, **{"epochs": epochs, **parse_overrides(overrides or [])})
        bundle = train(config, out=out or Path("runs") / config.name, data_root=data_root)
    except SkintriageError as error:
        _fail(error)
    console.print(f"bundle written to {bundle}")


@app.command("fit-gates")
def fit_gates_command(
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Overrides the recorded data_root.")] = None,
) -> None:
    """Fit a bundle's gates on its own training/validation split (training does this): the urgent threshold, the
    per-acquisition calibration, the uncertainty gate and the acquisition classifier. The weights and the pooled
    temperature and referral threshold are kept."""
    from skintriage.training.gates import refit_referral_gates

    try:
        bundle = refit_referral_gates(checkpoint, data_root=data_root)
    except SkintriageError as error:
        _fail(error)
    console.print(f"gates written to {bundle / 'model.json'}")


@app.command("evaluate")
def evaluate_command(
    source: Annotated[str, typer.Option("--source", help="Registered source to evaluate on.")],
    root: Root,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, predictions.csv, report.md.")],
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    split: Annotated[
        str | None, typer.Option("--split", help="Evaluate only this split (project split of the source).")
    ] = None,
    seed: Seed = 0,
) -> None:
    """Evaluate a model bundle (default: the bundled model) on a dataset and write the report."""
    from skintriage.data.sources import get_source
    from skintriage.evaluation.evaluate import evaluate_bundle, write_evaluation
    from skintriage.model.bundle import load_bundle

    try:
        bundle = load_bundle(checkpoint)
        if split is None:
            manifest = get_source(source).load(root, progress=True).with_images()
        else:
            manifest, _, _ = _load_and_split(source, root, None, "project", seed, True)
            manifest = manifest.where(split=split)
            if not len(manifest):
                raise InsufficientDataError(f"source {source!r} has no images in split {split!r}")
        result = evaluate_bundle(bundle, manifest.with_images(), name=source if split is None else f"{source}_{split}")
        before = _file_states(out)
        write_evaluation(result, out)
        written = _written_since(before, out)
    except SkintriageError as error:
        _fail(error)
    m = result.metrics
    console.print(
        f"{m['n_images']} images: balanced accuracy {m['balanced_accuracy']:.4f}, accuracy {m['accuracy']:.4f}, "
        f"macro AUC {m.get('macro_auc', float('nan')):.4f}, ECE {m['ece']:.4f}; referral sensitivity "
        f"{m['referral'].get('sensitivity', float('nan')):.4f} at specificity "
        f"{m['referral'].get('specificity', float('nan')):.4f}",
        highlight=False,
    )
    typer.echo(f"wrote {len(written)} files:")  # plain echo, not rich: a long path must not be wrapped
    for path in written:
        typer.echo(f"  {path}")
    console.print(DISCLAIMER, style="dim", highlight=False)


def _file_states(folder: Path) -> dict[Path, tuple[int, int, int]]:
    """(inode, mtime in ns, size) of every file under ``folder``: what :func:`_written_since` compares."""
    states: dict[Path, tuple[int, int, int]] = {}
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                states[path] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return states


def _written_since(before: dict[Path, tuple[int, int, int]], folder: Path) -> list[Path]:
    """The files under ``folder`` that are new or changed since ``before``, in name order.

    Taken from the folder rather than from a list of names, so that the listing stays true to what
    ``write_evaluation`` writes (the plots included) when it changes; files written atomically always get a
    new inode, so a rewrite with the same content is listed too, and a stale file from an earlier run is not.
    """
    return [path for path, state in _file_states(folder).items() if before.get(path) != state]


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; a folder contributes its photos by suffix, sorted, not recursing.

    The suffixes are the decoder's ``PHOTO_SUFFIXES``: HEIC and AVIF photos, which it refuses, are listed too, so
    that each is reported with the advice to convert it rather than skipped silently.

    A file named more than once (twice, or directly and through its folder, or through a link) is kept once,
    where it first appears: the same resolved path, so that it is neither predicted nor counted twice.
    """
    from skintriage.data.images import PHOTO_SUFFIXES

    out: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        else:
            found = [path]
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                out.append(file)
    return out


def _overlay_path(folder: Path, image: Path, taken: set[Path]) -> Path:
    """``<stem>_saliency.png`` in ``folder``, numbered (``_saliency_2``, ...) when an earlier image of the same
    run took that name (``a/mole.png`` and ``b/mole.jpg``), so that no overlay overwrites another."""
    path, n = folder / f"{image.stem}_saliency.png", 1
    while path in taken:
        n += 1
        path = folder / f"{image.stem}_saliency_{n}.png"
    taken.add(path)
    return path


@app.command("predict")
def predict_command(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files or folders of images (JPEG, PNG, TIFF, ...); a file named more than once is predicted once."
        ),
    ],
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    variant: Annotated[
        str,
        typer.Option(
            "--variant",
            help="Engine and precision: auto (the bundle's default), torch-float32, onnx-float32, onnx-int8, "
            "torch-bfloat16; each runs at the thresholds fitted for it.",
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image (JSON Lines).")] = False,
    age: Annotated[int | None, typer.Option("--age", help="Patient age in years.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Body site, e.g. face, scalp, trunk, lower leg.")] = None,
    immunosuppressed: Annotated[bool, typer.Option("--immunosuppressed", help="Immune suppression.")] = False,
    rapid_growth: Annotated[bool, typer.Option("--rapid-growth", help="Expanding rapidly (within 3 months).")] = False,
    asymptomatic: Annotated[bool, typer.Option("--asymptomatic", help="Not tender, not itchy.")] = False,
    known_net: Annotated[
        bool, typer.Option("--known-neuroendocrine-tumour", help="Known neuroendocrine tumour.")
    ] = False,
    known_primary: Annotated[
        bool, typer.Option("--known-primary-cancer", help="Known internal (non-neuroendocrine) cancer.")
    ] = False,
    prior_mcc: Annotated[bool, typer.Option("--prior-mcc", help="Previous Merkel cell carcinoma.")] = False,
    new_or_enlarging: Annotated[
        bool,
        typer.Option(
            "--new-or-enlarging",
            help="A new or enlarging nodule: the AEIOU and known-cancer rules count only for such a lesion.",
        ),
    ] = False,
    fair_skin: Annotated[
        bool | None,
        typer.Option(
            "--fair-skin/--not-fair-skin",
            help="Skin type, for the U of AEIOU (UV-exposed site on fair skin); not given by default.",
        ),
    ] = None,
    saliency_dir: Annotated[
        Path | None,
        typer.Option(
            "--saliency",
            help="Write a Grad-CAM overlay PNG per image into this folder and print where: a line 'saliency "
            "overlay: PATH' after the image's result, on stdout, or with --json on stderr (stdout stays JSON Lines).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    acquisition: Annotated[
        str,
        typer.Option(
            "--acquisition",
            help="Photo type: auto (the model reads it), dermoscopic or clinical; selects the temperature and "
            "referral thresholds fitted for that type.",
        ),
    ] = "auto",
) -> None:
    """Referral level, reasons and differential for each image, from calibrated probabilities and clinical context.

    A file that cannot be read is reported (with --json: an object with an "error" field) and the
    others go on; the exit code is 1 if any failed.
    """
    from skintriage.data.images import ImageDecodeError, decode_image
    from skintriage.data.taxonomy import DIAGNOSES
    from skintriage.inference.predictor import FileError, Predictor
    from skintriage.triage.acquisition import check_request
    from skintriage.triage.referral import ClinicalContext

    try:
        check_request(acquisition)
        context = ClinicalContext(
            age=age,
            site=site,
            immunosuppressed=immunosuppressed,
            rapid_growth=rapid_growth,
            asymptomatic=asymptomatic,
            known_neuroendocrine_tumour=known_net,
            known_other_primary_cancer=known_primary,
            prior_mcc=prior_mcc,
            new_or_enlarging_nodule=new_or_enlarging,
            fair_skin=fair_skin,
        )
        predictor = Predictor.load(checkpoint, variant=variant)
    except SkintriageError as error:
        _fail(error)
    paths = _expand(images)
    if saliency_dir is not None:
        saliency_dir.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()

        def results():  # one image at a time: the overlay needs the decoded image and its own backward pass
            for path in paths:
                try:
                    image = decode_image(path, name=str(path))
                except (ImageDecodeError, OSError) as error:
                    yield FileError(str(path), str(error)), None
                    continue
                prediction = predictor.predict(
                    image, context, with_saliency=True, file=str(path), acquisition=acquisition
                )
                out = _overlay_path(saliency_dir, path, taken)
                predictor.overlay(image, prediction.heatmap).save(out)
                yield prediction, out
    else:

        def results():
            for result in predictor.predict_files(paths, context, batch_size=batch_size, acquisition=acquisition):
                yield result, None

    failed = 0
    for result, overlay in results():
        failed += isinstance(result, FileError)
        if as_json:
            print(json.dumps(result.to_dict()), flush=True)
            if overlay is not None:  # plain echo, not rich: a long path must not be wrapped
                typer.echo(f"saliency overlay: {overlay}", err=True)
        elif isinstance(result, FileError):
            typer.secho(f"error: {result.error}", err=True, fg=typer.colors.RED)
        else:
            level = result.referral.level.upper()
            console.print(
                f"[bold]{result.file}[/bold]: {level} (malignancy probability {result.malignancy_probability:.2f}; "
                f"class call {DIAGNOSES[result.class_call].name})",
                highlight=False,
            )
            used = result.acquisition
            console.print(
                f"  photo type: {used.kind or 'not known'} ({used.why}); referral threshold "
                f"{used.referral_threshold:.3f}, urgent {used.urgent_threshold:.3f}",
                highlight=False,
            )
            for reason in result.referral.reasons:
                console.print(f"  - {reason.text}", highlight=False)
            for entry in result.referral.differential:
                console.print(f"  consider {entry.name}: {entry.why}", highlight=False)
            if overlay is not None:
                typer.echo(f"  saliency overlay: {overlay}")
    if not as_json:
        console.print(DISCLAIMER, style="dim", highlight=False)
    if failed:
        raise typer.Exit(code=1)


@app.command("guidance")
def guidance_command(
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="Topic id (repeatable); all topics by default.")
    ] = None,
    workup: Annotated[
        str | None,
        typer.Option(
            "--workup",
            help="Only the topics of one work-up pathway, the key a card's differential entry carries "
            "(e.g. suspected_mcc, metastasis); an unknown key lists the valid ones.",
        ),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="md or json.")] = "md",
) -> None:
    """The diagnostic work-up guidance (biopsy, immunohistochemistry, grading, imaging, ...), with citations."""
    from skintriage.triage.guidance import load_guidance, render_markdown, to_json, topics_for_differential

    if output_format not in ("md", "json"):
        _fail(ArgumentError(f"--format must be md or json, not {output_format!r}"))
    try:
        kb = load_guidance()
        if workup is not None:
            topic = [*(topic or []), *topics_for_differential([workup])]
        if output_format == "json":
            print(json.dumps({"disclaimer": DISCLAIMER, **to_json(kb, topics=topic or None)}, indent=2))
        else:
            print(render_markdown(kb, topics=topic or None))
            print(f"\n_{DISCLAIMER}_")
    except SkintriageError as error:
        _fail(error)


@app.command("rules")
def rules_command(output_format: Annotated[str, typer.Option("--format", help="md or json.")] = "md") -> None:
    """The referral rules: each rule's id, when it fires and the level it asks for (the README's table)."""
    from skintriage.triage.referral import rule_conditions, rules_markdown

    if output_format not in ("md", "json"):
        _fail(ArgumentError(f"--format must be md or json, not {output_format!r}"))
    if output_format == "json":
        rows = [{"rule": r.id, "level": r.level.label, "fires_when": text} for r, text in rule_conditions()]
        print(json.dumps({"disclaimer": DISCLAIMER, "rules": rows}, indent=2))
    else:
        print(rules_markdown(), end="")
        print(f"\n_{DISCLAIMER}_")


@app.command("export")
def export_command(
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    variant: Annotated[
        str,
        typer.Option(
            "--variant",
            help="onnx-float32, onnx-int8, torch-bfloat16, a comma-separated list, or all: each exported, "
            "refitted and compared.",
        ),
    ] = "onnx-float32",
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Data folder of the bundle's training config (default: the config's)."),
    ] = None,
) -> None:
    """Make a deployment variant of a bundle, calibrated at its own precision, and choose the default variant.

    Writes the variant's file into the bundle folder, fits its temperature and thresholds on validation
    outputs computed at that precision, compares it with float32 on validation and every test set
    (probabilities, referral levels, metrics against float32's 95% CIs) and records it in model.json,
    with the default variant: the fastest admissible one at batch 1, measured here.
    """
    from skintriage.inference.variants import REFERENCE, VARIANTS, variant_spec
    from skintriage.training.deployment import export_variants

    try:
        chosen = [n for n in VARIANTS if n != REFERENCE] if variant == "all" else variant.split(",")
        names = [variant_spec(name.strip()).name for name in chosen]
        for name, entry in export_variants(checkpoint, names, data_root=data_root).items():
            validation = entry.parity["sets"]["validation"]
            console.print(
                f"{name}: {entry.file or 'no file (PyTorch weights)'}; validation: max |dp| "
                f"{validation['max_abs_probability']:.2e}, referral levels agree on {validation['level_agreement']:.2%}"
                f" ({validation['level_disagreements']} differ); admissible: {entry.admissible} ({entry.verdict})",
                highlight=False,
            )
        from skintriage.model.bundle import read_metadata

        metadata = read_metadata(checkpoint)
    except SkintriageError as error:
        _fail(error)
    speeds = {name: v.speed for name, v in (metadata.variants or {}).items()}
    console.print(f"batch-1 / batch-32 forward ms here: {speeds}", highlight=False)
    console.print(f"default variant: {metadata.default_variant}", highlight=False)


@app.command("bench")
def bench_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for results.md, results.json, scaling.png.")] = Path(
        "experiments/performance"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Smoke test: every section, tiny counts (not figures).")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Comma-separated sections: latency,throughput,variants,training,scaling."),
    ] = None,
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="Real data folder (default: the benchmark config's).")
    ] = None,
) -> None:
    """Latency, folder throughput, ONNX, training throughput and input-size scaling, each against a plain reference.

    Figures are medians over repeated runs after warm-up; comparisons alternate the candidates in one
    run. Run it on an otherwise idle machine: other work on the cores makes every figure pessimistic.
    """
    from rich.markdown import Markdown

    from skintriage.bench.report import SECTION_WRITERS
    from skintriage.bench.suite import parse_sections, run_suite

    try:
        parse_sections(only)
        run_suite(
            out=out,
            quick=quick,
            only=only,
            bundle=checkpoint,
            data_root=data_root,
            on_section=lambda name, section: console.print(Markdown("\n".join(SECTION_WRITERS[name](section)))),
        )
    except SkintriageError as error:
        _fail(error)
    console.print(f"wrote {out}/results.md, results.json" + ("" if only and "scaling" not in only else ", scaling.png"))


if __name__ == "__main__":
    app()
