"""Console output of the stages: a short summary table and the counts of rejected files by reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from pipelines.dicom.reasons import Rejected, is_failure


def summary_table(title: str, rows: Sequence[Sequence[object]]) -> str:
    """A table as text: a title, a rule, then rows of aligned columns (two in a summary: label, value)."""
    ncols = max((len(row) for row in rows), default=2)
    widths = [max((len(str(row[i])) for row in rows if len(row) > i + 1), default=0) for i in range(ncols - 1)]
    lines = [title, "-" * max(len(title), sum(widths) + 2 * (ncols - 1) + 10)]
    lines += ["  ".join([*(f"{str(cell):<{w}}" for cell, w in zip(row[:-1], widths, strict=False)), str(row[-1])])
              for row in rows]
    return "\n".join(lines)


def reject_counts(rejected: Iterable[Rejected]) -> list[tuple[str, object]]:
    """("rejected: reason", count) rows, failures marked."""
    counts = Counter(r.reason_code for r in rejected)
    return [(f"rejected: {code}" + ("" if is_failure(code) else " (excluded)"), n) for code, n in sorted(counts.items())]
