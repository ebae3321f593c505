"""The README is the front door: short, every link in it leads somewhere, and its table of the
shipped models is the manifest's (`python -m models.build --table`). (Its table of the exercise's
variants is tests/test_grid.py's.)"""
import re
from pathlib import Path

import models
from models.build import table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_readme_is_short():
    assert len(README.splitlines()) < 250


def test_every_link_of_the_readme_leads_to_a_file():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    assert links and [link for link in links if not (ROOT / link).exists()] == []


def test_the_readme_shows_the_shipped_models_as_the_manifest_has_them():
    assert table(models.manifest()) in README, \
        "README.md is behind models/manifest.json: paste python -m models.build --table"


def test_the_readme_opens_with_the_two_commands_the_page_and_dj_dx():
    heads = [line for line in README.splitlines() if line.startswith("## ")]
    assert heads[:3] == ["## Two commands", "## The page", "## How a backward pass reaches the input"]
