"""The README blocks that `grid.py report --readme` and `grid.py compare --readme` keep up to date:
a generated block between two marker lines of a page, rewritten in place, the rest untouched.
"""
import os
from pathlib import Path

from .cli import RunError
from .report import load_runs, seed_list, table

BLOCK = ("<!-- grid.py report --readme writes from here -->",
         "<!-- grid.py report --readme writes up to here -->")


def link(target, base):
    """The path of file `target` as a link from a page in folder `base`: through base's own
    entries where they lead there (docs/results is a link to ../results, and a docs page may
    link only inside docs/), else relative."""
    rel = Path(os.path.relpath(target, base))
    inside = Path(*[p for p in rel.parts if p != ".."])
    if rel.parts[0] == ".." and (Path(base) / inside).resolve() == Path(target).resolve():
        return inside.as_posix()
    return rel.as_posix()


def readme_block(runs, out, base):
    """The lines between the BLOCK markers of a README in folder `base`: the accuracy figure of
    the report in `out` and every variant's row at its last epoch, from the runs in `runs`."""
    variants, _ = load_runs(runs)
    figure_path, report = (link(Path(out) / name, base) for name in ("accuracy.png",
                                                                       "README.md"))
    return [f"![accuracy of every variant over the epochs, mean over seeds]({figure_path})", "",
            f"Every variant at its last epoch ({seed_list(variants)}: mean ± standard deviation "
            f"where several reached it, and each seed's value where they lie 10 points or more "
            f"apart, in %; made by `python grid.py report`, whose "
            f"[report]({report}) has the other epochs and the findings):", "",
            *table(variants, ())]


def write_block(readme, markers, lines):
    """Rewrite the lines between the two `markers` lines of file `readme` with `lines`;
    RunError in one sentence if it cannot be read or lacks the markers."""
    readme = Path(readme)
    try:
        text = readme.read_text()
    except OSError as exc:
        raise RunError(f"cannot read {readme}: {exc.strerror}") from None
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise RunError(f"{readme} has no block to write: it needs the line {markers[0]} and, "
                       f"below it, {markers[1]}")
    readme.write_text(text[:start + len(markers[0])] + "\n" + "\n".join(lines) + "\n"
                      + text[end:])


def update_readme(readme, runs, out):
    """Rewrite the lines between the two BLOCK markers of `readme` with readme_block."""
    write_block(readme, BLOCK, readme_block(runs, out, Path(readme).parent))
