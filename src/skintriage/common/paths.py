"""Where the project's files are: the bundled model inside the package, and the source checkout around it.

A leaf (``pathlib`` only), so that the command line can show the default model in its help texts without
importing torch. The bundled model is package data (pyproject's ``[tool.setuptools.package-data]``): a
wheel or a non-editable install carries it, so ``skintriage predict`` and the demo find it wherever the
package is installed. The demo's example list (``data/demo_examples.csv``), the configs and the experiments
are not package data: they belong to the checkout (the list names images under the data root, which the
project does not ship), so :data:`CHECKOUT_ROOT` is only meaningful when running from a source tree.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../skintriage, in src/ or in site-packages
# The model the demo, `skintriage predict` and `skintriage evaluate` load by default (model.json, weights, gates).
DEFAULT_BUNDLE = PACKAGE_DIR / "model" / "default"
# The source checkout holding src/skintriage (data/, configs/, experiments/); absent around an installed package.
CHECKOUT_ROOT = PACKAGE_DIR.parents[1]
