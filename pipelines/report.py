"""Console output of the stages: a short summary table and one-line problem reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import click

from .dicom.reasons import Rejected, is_failure


def summary_table(title: str, rows: Sequence[tuple[str, object]]) -> str:
    """A two-column table as text."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)


def reject_counts(rejected: Iterable[Rejected]) -> list[tuple[str, object]]:
    """("rejected: reason", count) rows, failures marked."""
    counts = Counter(r.reason_code for r in rejected)
    return [(f"rejected: {code}" + ("" if is_failure(code) else " (excluded)"), n) for code, n in sorted(counts.items())]


def echo_problem(item: str, reason: str, fix: str) -> None:
    """One clear line on stderr: the item, what is wrong, and how to fix it."""
    click.echo(f"medvit: {item}: {reason}" + (f" -> {fix}" if fix else ""), err=True)
