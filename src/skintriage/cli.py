"""The ``skintriage`` command line: a thin shell over the library (no logic lives here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from skintriage import DISCLAIMER
from skintriage.checkpoint import DEFAULT_BUNDLE, BundleError
from skintriage.config import ConfigError
from skintriage.data.records import ManifestError
from skintriage.data.sources import SOURCES, FetchError, get_source
from skintriage.data.sources.files import MetadataError
from skintriage.data.splits import SPLIT_STRATEGIES, audit_leakage, hash_images, split_manifest
from skintriage.data.summary import summarize_manifest
from skintriage.taxonomy import UnknownLabelError

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

USER_ERRORS = (
    ManifestError,
    MetadataError,
    UnknownLabelError,
    FetchError,
    ConfigError,
    BundleError,
    FileNotFoundError,
    KeyError,
    ValueError,
)
Checkpoint = Annotated[Path, typer.Option("--checkpoint", help="Model bundle folder (model.json + model.safetensors).")]


def _fail(error: Exception) -> None:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _load_and_split(source_name: str, root: Path, metadata: Path | None, split: str, seed: int, hash_all: bool):
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
    for source in sorted(SOURCES.values(), key=lambda s: s.name):
        console.rule(f"[bold]{source.name}[/]: {source.title}", align="left")
        console.print(source.description, highlight=False)
        console.print(f"[bold]licence:[/] {source.licence}", highlight=False)
        console.print(f"[bold]acquisition:[/] {source.acquisition or 'per image'}", highlight=False)
        console.print("[bold]how to obtain it:[/]", highlight=False)
        console.print(source.obtain, highlight=False, markup=False)
        if source.fetch:
            console.print(f"  or: skintriage data fetch {source.name} --dest DIR", highlight=False)
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
    try:
        manifest, hashes, policy = _load_and_split(source, root, metadata, split, seed, hash_all)
        summary = summarize_manifest(manifest, leakage=audit_leakage(manifest, hashes), split_policy=policy)
    except USER_ERRORS as error:
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
    try:
        manifest, hashes, policy = _load_and_split(source, root, metadata, split, seed, hash_all)
        report = audit_leakage(manifest, hashes)
    except USER_ERRORS as error:
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
    try:
        chosen = get_source(source)
        if chosen.fetch is None:
            raise FetchError(f"{source} has no scripted download. To obtain it:\n{chosen.obtain}")
        chosen.fetch(dest / source)
    except USER_ERRORS as error:
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
    from skintriage.config import load_config, parse_overrides
    from skintriage.train import train

    try:
        config = load_config(config_path, **{"epochs": epochs, **parse_overrides(overrides or [])})
        bundle = train(config, out=out or Path("runs") / config.name, data_root=data_root)
    except USER_ERRORS as error:
        _fail(error)
    console.print(f"bundle written to {bundle}")


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
    from skintriage.checkpoint import load_bundle
    from skintriage.evaluate import evaluate_bundle, write_evaluation

    try:
        bundle = load_bundle(checkpoint)
        if split is None:
            manifest = get_source(source).load(root, progress=True).with_images()
        else:
            manifest, _, _ = _load_and_split(source, root, None, "project", seed, True)
            frame = manifest.frame[manifest.frame["split"] == split]
            if frame.empty:
                raise ValueError(f"source {source!r} has no images in split {split!r}")
            manifest = type(manifest)(frame.reset_index(drop=True), manifest.root)
        result = evaluate_bundle(bundle, manifest.with_images(), name=source if split is None else f"{source}_{split}")
        write_evaluation(result, out)
    except USER_ERRORS as error:
        _fail(error)
    m = result.metrics
    console.print(
        f"{m['n_images']} images: balanced accuracy {m['balanced_accuracy']:.4f}, accuracy {m['accuracy']:.4f}, "
        f"macro AUC {m.get('macro_auc', float('nan')):.4f}, ECE {m['ece']:.4f}; referral sensitivity "
        f"{m['referral'].get('sensitivity', float('nan')):.4f} at specificity "
        f"{m['referral'].get('specificity', float('nan')):.4f}",
        highlight=False,
    )
    console.print(f"wrote {out}/metrics.json, predictions.csv, report.md", highlight=False)
    console.print(DISCLAIMER, style="dim", highlight=False)


@app.command("predict")
def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, TIFF, ...).")],
    checkpoint: Checkpoint = DEFAULT_BUNDLE,
    as_json: AsJson = False,
) -> None:
    """Calibrated class probabilities and the malignancy referral score for each image."""
    from skintriage.checkpoint import load_bundle
    from skintriage.data.images import ImageDecodeError, decode_image
    from skintriage.inference import Predictor
    from skintriage.metrics import malignancy_score

    try:
        bundle = load_bundle(checkpoint)
    except USER_ERRORS as error:
        _fail(error)
    predictor = Predictor(bundle)
    threshold = bundle.metadata.get("calibration", {}).get("referral_threshold")
    results, failed = [], 0
    for path in images:
        try:
            probabilities = predictor.probabilities(decode_image(path, name=str(path)))
        except (ImageDecodeError, OSError) as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            failed += 1
            continue
        score = float(malignancy_score(probabilities[None], bundle.classes)[0])
        results.append(
            {
                "image": str(path),
                "probabilities": dict(zip(bundle.classes, map(float, probabilities), strict=True)),
                "malignancy_score": score,
                "referral_threshold": threshold,
                "refer": None if threshold is None else score >= threshold,
            }
        )
    if as_json:
        print(
            json.dumps({"disclaimer": DISCLAIMER, "model": bundle.metadata.get("name"), "results": results}, indent=2)
        )
    else:
        for result in results:
            top = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:3]
            decision = {True: "REFER", False: "no referral", None: "no threshold"}[result["refer"]]
            console.print(
                f"{result['image']}: malignancy score {result['malignancy_score']:.3f} -> {decision}; "
                + ", ".join(f"{name} {p:.3f}" for name, p in top),
                highlight=False,
            )
        console.print(DISCLAIMER, style="dim", highlight=False)
    if failed:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
