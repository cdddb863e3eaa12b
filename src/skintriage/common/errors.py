"""The one base class of the errors a user can act on, and those that more than one stage raises.

Every domain error of the package (a bad manifest, metadata file, label, config, bundle, image, argument ...)
subclasses :class:`SkintriageError` and keeps its builtin base (``class ManifestError(SkintriageError,
ValueError)``), so that ``except ValueError`` around the library still catches it. The command line catches
``SkintriageError`` only: that prints one ``error: ...`` line and exits 1; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class SkintriageError(Exception):
    """An error the user can act on: a bad input file, row or field, a missing file, a damaged bundle, a bad
    argument. Its message names the culprit (the file, row, field or option) and, where there is one, the fix;
    the CLI prints it as one line without a traceback. Anything that is not one of these is a bug."""


class ArgumentError(SkintriageError, ValueError):
    """A value the user chose (a command-line option, a form field of the demo) that is not one the code accepts;
    the message names the option and the accepted values."""


class InsufficientDataError(SkintriageError, ValueError):
    """The user's data lacks what a step needs: no images in a split, no malignant (or benign) rows to fit a
    threshold on, a class without training images. The message says what is missing."""


class BundleError(SkintriageError, ValueError):
    """A model bundle that is missing, damaged or made for other code; the message says which check failed.

    Defined here, not in :mod:`skintriage.model.bundle` (which re-exports it), because the torch-free steps
    that read a bundle's metadata (calibration, referral, acquisition) raise it too."""
