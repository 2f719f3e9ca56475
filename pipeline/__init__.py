"""formdigits pipeline: the stages as plain typed functions.

ingest → register → segment → normalize → recognize → validate → store → review.
Nothing in this package imports Prefect; ``flows`` wires these stages.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
