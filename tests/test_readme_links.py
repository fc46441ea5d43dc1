"""Every in-page link of README.md (``[text](#anchor)``) leads to one of its headings, by GitHub's rule for
heading anchors (lower case; punctuation but hyphens and underscores dropped; spaces as hyphens; a repeated
heading's anchor numbered ``-1``, ``-2``...). A renamed heading left six links pointing nowhere."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def anchors(markdown: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_the_anchor_rule_on_headings_like_the_readmes() -> None:
    text = "## Ablation (the paper's, at our scale)\n```\n# not a heading\n```\n### `keepfit` speed\n## A\n## A\n"
    assert anchors(text) == {"ablation-the-papers-at-our-scale", "keepfit-speed", "a", "a-1"}


def test_every_in_page_link_of_the_readme_leads_to_a_heading() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(#([^)\s]+)\)", text)
    assert links, "the README has no in-page links: the pattern no longer finds them"
    missing = sorted(set(links) - anchors(text))
    assert not missing, f"README links to no heading: {missing}"


def _cells(row: str) -> int:
    """The cells of a Markdown table row (a `|` inside backticks or escaped is text, not a border)."""
    return len(re.sub(r"`[^`]*`", "x", row).replace("\\|", "x").strip().strip("|").split("|"))


def table_misfits(markdown: str) -> list[str]:
    """Rows of the Markdown tables in ``markdown`` whose cell count is not their header's."""
    misfits: list[str] = []
    fenced, table = False, []
    for number, line in enumerate([*markdown.splitlines(), ""], start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            table.append((number, line))
            continue
        width = _cells(table[0][1]) if table else 0
        misfits += [f"line {n}: {_cells(row)} cells under a header of {width}" for n, row in table[1:]
                    if _cells(row) != width]
        table = []
    return misfits


def test_every_row_of_a_readme_table_has_its_headers_cells() -> None:
    """Rows of another table pasted under a header (seven accuracy figures under five calibration columns) render as
    rows of nothing that reads."""
    assert table_misfits("| a | b |\n|---|---|\n| 1 | `x | y` |\n| 1 | 2 | 3 |\n") == ["line 4: 3 cells under a header of 2"]
    assert table_misfits(README.read_text(encoding="utf-8")) == []
