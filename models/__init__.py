"""Digit CNNs, their training and fine-tuning recipes, evaluation, and the shipped weights."""

from __future__ import annotations
