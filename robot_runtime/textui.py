"""Text output for people: aligned tables."""

from __future__ import annotations


def format_table(rows: list[tuple]) -> str:
    """Right-aligned columns with a rule under the first (header) row."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
