"""Supervise LLM fine-tuning pipelines on SLURM clusters."""

from __future__ import annotations

__version__ = "0.1.0"
