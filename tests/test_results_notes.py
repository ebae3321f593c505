"""The tables of results/<topic>/README.md (issue 41's notes) are what the experiments' own
markdown() makes from the files beside them: a note cannot fall behind its numbers."""
import json
import re
from pathlib import Path

import pytest

from experiments import claims, patch_location, survival, universal_seeds

RESULTS = Path(__file__).resolve().parent.parent / "results"
CASES = [("survival", lambda: [survival.markdown(json.loads((RESULTS / "survival" / m /
                                                             "survival.json").read_text()))
                               for m in ("standard", "pgd")]),
         ("universal_seeds", lambda: [universal_seeds.markdown(json.loads(
             (RESULTS / "universal_seeds" / m / "universal_seeds.json").read_text()), m)
             for m in ("standard", "pgd")]),
         ("patch_location", lambda: [patch_location.markdown(json.loads(
             (RESULTS / "patch_location" / sub / "patch_location.json").read_text()))
             for sub in ("", "all-targets")]),
         ("claims", lambda: [claims.markdown(json.loads(
             (RESULTS / "claims" / "claims.json").read_text()))])]


@pytest.mark.parametrize("topic, tables", CASES, ids=[c[0] for c in CASES])
def test_the_note_holds_the_tables_of_its_files(topic, tables):
    note = (RESULTS / topic / "README.md").read_text().splitlines()
    for lines in tables():
        missing = [line for line in lines if line and line not in note]
        assert not missing, f"results/{topic}/README.md lacks: {missing[0]}"


def test_the_minimum_note_quotes_its_medians():
    report = json.loads((RESULTS / "minimum" / "minimum.json").read_text())["models"]
    note = (RESULTS / "minimum" / "README.md").read_text()
    rows = {m: re.search(rf"^\| {name} \|.*$", note, re.M).group(0)
            for m, name in (("standard", "standard"), ("pgd", "PGD-trained"))}
    for m, row in rows.items():
        s = report[m]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{s['old_whitebox_median']:.2f}"
        assert cells[2].startswith(f"{s['median_from_image']:.2f} ")
        assert cells[3].startswith(f"**{s['median_ddn']:.2f}**")
        assert cells[4].startswith(f"{s['hopskipjump_median']:.2f} ")
        assert cells[5] == f"{round(s['ddn_below_hopskipjump'] * s['images'])} of {s['images']}"
