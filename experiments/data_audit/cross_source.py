"""Cross-source leakage audit of a training config: every training source and every test source together.

Each source is split on its own, so a photo two collections share (DermNet filing one image under two
topics in two folders, an atlas photo copied into another dataset, a HAM10000 lesion in the ISIC test
set) could sit in train in one and in a test set in the other. This script hashes every image of the
config's sources and test sets, lists the identical and near-identical pairs that cross sources, the
rows the training pipeline moved (``resolve_cross_source_duplicates``), and audits the final splits.

Usage (project root): python experiments/data_audit/cross_source.py [--config configs/pretrained_lite0.yaml]
Writes experiments/data_audit/cross_source.json and cross_source.md.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from skintriage.common.atomic import atomic_write_text
from skintriage.common.markdown import markdown_table
from skintriage.data.sources import get_source
from skintriage.data.splits import audit_leakage, concat_hashes, hash_images, near_duplicate_pairs
from skintriage.training.config import load_config
from skintriage.training.data import combine, training_manifest

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/pretrained_lite0.yaml"))
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    config = load_config(args.config)

    data = training_manifest(config, data_root=args.data_root, progress=True)
    loaded = [get_source(s.name).load(config.source_root(s, args.data_root)).with_images() for s in config.test_sources]
    tests = [test.with_splits(["test"] * len(test)) for test in loaded]  # an external test set is all test
    everything = combine([data.manifest, *tests])
    hashes = concat_hashes([data.hashes, *(hash_images(test, progress=True) for test in tests)])

    frame = everything.frame
    sources = (frame["source"] + ":" + frame["acquisition"].astype(str)).tolist()
    ids, splits = frame["image_id"].tolist(), frame["split"].tolist()
    crossing = []
    for i, j, bits in near_duplicate_pairs(hashes):
        if frame["source"].iloc[i] != frame["source"].iloc[j] or _folder(ids[i]) != _folder(ids[j]):
            crossing.append(
                {"image_a": ids[i], "split_a": splits[i], "image_b": ids[j], "split_b": splits[j], "bits": bits}
            )
    by_digest: dict[str, int] = {}
    identical = []
    for row, digest in enumerate(hashes.sha256):
        if digest is None:
            continue
        first = by_digest.setdefault(digest, row)
        if first != row and frame["source"].iloc[first] != frame["source"].iloc[row]:
            identical.append({"image_a": ids[first], "image_b": ids[row]})
    audit = audit_leakage(everything, hashes)
    result = {
        "config": str(args.config),
        "images": len(frame),
        "images_per_source": dict(Counter(sources)),
        "near_identical_pairs_across_sources_or_folders": crossing,
        "identical_pairs_across_sources": identical,
        "rows_moved_by_the_training_pipeline": [move.to_dict() for move in data.cross_source_moves],
        "final_audit": audit.to_dict(),
    }
    atomic_write_text(HERE / "cross_source.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(HERE / "cross_source.md", render(result))
    print(render(result))


def _folder(image_id: str) -> str:
    """The source prefix and topic or class folder an id names, e.g. "dermnet:halo_naevus": the two DermNet
    folders share one source name, so a photo filed under two topics shows up as two folders."""
    return image_id.split("/", 1)[0]


def render(result: dict) -> str:
    audit = result["final_audit"]
    lines = [
        "# Cross-source leakage audit",
        "",
        f"Config `{result['config']}`: {result['images']:,} images of every training and test source, hashed "
        "together (byte-identical: SHA-256; near-identical: dHash and colour thumbnail, as the splitter). "
        "Regenerate: `python experiments/data_audit/cross_source.py`.",
        "",
        markdown_table(
            header=["source:acquisition", "images"],
            rows=[[name, f"{count:,}"] for name, count in sorted(result["images_per_source"].items())],
        ),
        "",
        f"* Near-identical pairs that cross a source or a topic/class folder (within a split they are kept together): "
        f"**{len(result['near_identical_pairs_across_sources_or_folders'])}**",
        f"* Byte-identical pairs across sources: **{len(result['identical_pairs_across_sources'])}**",
        f"* Rows the training pipeline moved to keep a group in one split: "
        f"**{len(result['rows_moved_by_the_training_pipeline'])}**",
        "",
    ]
    for move in result["rows_moved_by_the_training_pipeline"]:
        lines.append(f"  * `{move['image_id']}` ({move['source']}): {move['from']} → {move['to']}")
    for pair in result["near_identical_pairs_across_sources_or_folders"]:
        lines.append(
            f"  * pair `{pair['image_a']}` ({pair['split_a']}) / `{pair['image_b']}` ({pair['split_b']}), "
            f"{pair['bits']} bits"
        )
    lines += [
        "",
        "After the move, the final splits (train / val / test of the training sources, the external test sets "
        f"counted as test) share **{audit['shared_lesions']}** lesions, "
        f"**{audit['identical_images']}** byte-identical and **{audit['near_identical_images']}** near-identical "
        f"images across splits; split sizes {audit['split_sizes']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
