"""Prefect flows and the ``formdigits`` command line: they only wire ``pipeline`` stages."""

from __future__ import annotations
