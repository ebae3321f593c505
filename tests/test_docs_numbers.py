"""Every number a docs page's "Second look" note quotes from a results note appears in that
note (results/<topic>/README.md, which tests/test_results_notes.py holds to its files): the text
cannot fall behind the measurements without a test failing."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTE = re.compile(r'^!!! note "Second look.*?\n((?:    .*\n|\n)+)', re.M)


def second_looks():
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in NOTE.findall(page.read_text()):
            links = re.findall(r"\]\((results/[^)]+\.md)\)", block)
            yield pytest.param(page.name, block, links, id=f"{page.stem}:{links}")


@pytest.mark.parametrize("page, block, links", list(second_looks()))
def test_the_second_looks_quote_their_notes(page, block, links):
    assert links, f"a second look on {page} links no results note"
    notes = " ".join((ROOT / link).read_text() for link in links)
    # ranges whole ("17.0-23.7"), then single numbers with a decimal point or a percent sign
    numbers = set(re.findall(r"\d+(?:\.\d+)?-\d+(?:\.\d+)?(?=%|\b)|\d+\.\d+|\d+(?=%)", block))
    missing = sorted(n for n in numbers if n not in notes)
    assert missing == [], f"{page} quotes {missing}, which {links} do not hold"
