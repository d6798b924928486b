"""The plain-text table every benchmark prints."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns separated by ``|`` (and ``title`` above)."""
    if title is not None:
        print(f"\n{title}")
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
