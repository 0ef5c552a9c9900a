"""Print the initializer table of the README, from the registry itself.

    python scripts/initializer_table.py            # print the Markdown table
    python scripts/initializer_table.py --write    # replace it in README.md

tests/test_readme.py checks that the README's table is what this prints, so the two never drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

from initbench.inits import describe_initializers

BEGIN = "<!-- initializers: begin (scripts/initializer_table.py) -->"
END = "<!-- initializers: end -->"
COLUMNS = ("name", "aliases", "formula", "gain", "options", "models", "paper")


def markdown_table() -> str:
    def cell(value) -> str:
        return str(value or "").replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in describe_initializers():
        name = f"`{row['name']}`"
        lines.append("| " + " | ".join([name, *(cell(row[c]) for c in COLUMNS[1:])]) + " |")
    return "\n".join(lines)


def replace_in(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + markdown_table() + "\n" + text[end:]


if __name__ == "__main__":
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        readme.write_text(replace_in(readme.read_text()))
    else:
        print(markdown_table())
