"""The page's one-click lessons, written from measurements on the shipped models.

    python -m web.lessons      # 75 s on a busy 2-core machine

`measure` attacks each of the page's ready digits with each shipped model exactly as the page
does (web.api.Served.attack, one image at a time): FGS and PGD at every eps of the page's slider
(0 to 0.5 by 0.01), and targeted PGD toward every other class at a few large eps. What each model
then reads goes to results/page/flips.json. `lessons` reads that file, checks that each lesson's
claim holds in it (ValueError if not), and writes the captions with the numbers they quote and
the verdict each model must show to web/static/lessons.json, which the page loads.
tests/test_lessons.py fails when that file falls behind the measurements; tests/test_page.py
clicks each lesson in a browser and reads the three verdicts.
"""
import json
from pathlib import Path

import numpy as np

from attacks import certify

ROOT = Path(__file__).resolve().parent.parent
FLIPS = ROOT / "results" / "page" / "flips.json"
LESSONS = ROOT / "web" / "static" / "lessons.json"
GRID = [round(0.01 * i, 2) for i in range(51)]  # the page's eps slider
TARGETED_EPS = [0.3, 0.4, 0.45, 0.5]
FOOLED, RIGHT, WRONG = "fooled", "still right", "the model was already wrong"


def verdict(truth, before, after):
    """A model's verdict on one attack, as the page shows it: against the true label `truth`,
    or for a drawn digit (truth None) against the model's own answer `before`."""
    if truth is not None and before != truth:
        return WRONG
    return RIGHT if after == (before if truth is None else truth) else FOOLED


def measure(served, seeds):
    """What each model of `served` ({name: Served}) reads on each of `seeds` (the page's ready
    digits) before and after each attack: the content of results/page/flips.json."""
    out = {"grid": GRID, "targeted_eps": TARGETED_EPS,
           "seeds": [{"index": s["index"], "label": s["label"]} for s in seeds], "models": {}}
    for name, model in served.items():
        images = [np.asarray(s["image"], dtype=np.float32)[None, None] for s in seeds]

        def reads(x, attack, eps, target=None):
            return int(model.attack(x, attack, eps, target)[2].argmax())
        clean = [int(model.probs(x)[0].argmax()) for x in images]
        out["models"][name] = {
            "clean": clean,
            # whether interval bounds prove the model's own answer at each eps (the page's
            # "certified at this eps")
            "certified": [[bool(certify(model.model, x, np.array([c]), e)[0]) for e in GRID]
                          for x, c in zip(images, clean)],
            **{a: [[reads(x, a, e) for e in GRID] for x in images] for a in ("fgs", "pgd")},
            "targeted_pgd": [[None if c == s["label"] else
                              [reads(x, "targeted_pgd", e, c) for e in TARGETED_EPS]
                              for c in range(10)] for s, x in zip(seeds, images)]}
        print(f"  {name}: measured", flush=True)
    return out


class Table:
    """results/page/flips.json, asked the questions the captions need."""

    def __init__(self, flips):
        self.f, self.seeds = flips, flips["seeds"]

    def pos(self, index):
        return next(i for i, s in enumerate(self.seeds) if s["index"] == index)

    def ready(self):
        """Positions of the seeds that every model reads right before any attack (the page's
        last seed is one that the first model misreads)."""
        return [i for i, s in enumerate(self.seeds)
                if all(m["clean"][i] == s["label"] for m in self.f["models"].values())]

    def reads(self, name, attack, index, eps, target=None):
        m, i = self.f["models"][name], self.pos(index)
        if attack == "targeted_pgd":
            return m[attack][i][target][self.f["targeted_eps"].index(eps)]
        return m[attack][i][GRID.index(eps)]

    def certified(self, index, eps):
        """{model: whether the bounds prove its own answer on seed `index` at `eps`}."""
        i, k = self.pos(index), GRID.index(eps)
        return {name: m["certified"][i][k] for name, m in self.f["models"].items()}

    def certified_share(self, name, eps):
        """How many of the ready seeds the bounds certify for model `name` at `eps`."""
        return sum(self.f["models"][name]["certified"][i][GRID.index(eps)]
                   for i in self.ready())

    def verdicts(self, index, attack, eps, target=None):
        label, i = self.seeds[self.pos(index)]["label"], self.pos(index)
        return {name: verdict(label, m["clean"][i], self.reads(name, attack, index, eps, target))
                for name, m in self.f["models"].items()}

    def first_fooled(self, name, attack):
        """Per ready seed: the smallest eps of the grid at which `attack` fools `name` (None: not
        up to 0.5)."""
        m = self.f["models"][name][attack]
        return [next((e for e, r in zip(GRID, m[i]) if r != self.seeds[i]["label"]), None)
                for i in self.ready()]

    def reached(self, name, eps):
        """(pairs of a ready seed and another class, how many of them targeted PGD at `eps`
        makes `name` read as that class)."""
        k, rows = self.f["targeted_eps"].index(eps), self.f["models"][name]["targeted_pgd"]
        pairs = [(c, rows[i][c][k]) for i in self.ready() for c in range(10)
                 if rows[i][c] is not None]
        return len(pairs), sum(c == r for c, r in pairs)


def proven_up_to(table, name):
    """The largest eps of the grid at which the bounds certify `name` on some ready digit."""
    rows = table.f["models"][name]["certified"]
    return max((e for i in table.ready() for e, c in zip(GRID, rows[i]) if c), default=0.0)


def span(eps):
    """'0.09-0.20' over the eps that are not None."""
    found = [e for e in eps if e is not None]
    return f"{min(found):.2f}-{max(found):.2f}" if found else "never"


def fooled_on(eps):
    """'on all 8, first at eps 0.07-0.13' (or 'on 2 of 8, ...', 'on none of 8') of
    first_fooled."""
    k = sum(e is not None for e in eps)
    if not k:
        return f"on none of {len(eps)}"
    return f"on {'all' if k == len(eps) else f'{k} of'} {len(eps)}, first at eps {span(eps)}"


def lesson(table, key, title, caption, numbers, seed, attack, eps, target=None, claim=None,
           proven=None):
    """A lesson's entry in lessons.json; ValueError if the measured verdicts are not `claim`, or
    (when given) the certificates not `proven` ({model: bool})."""
    expect = table.verdicts(seed, attack, eps, target)
    if expect != claim:
        raise ValueError(f"lesson {key!r} claims {claim}, but the measurements say {expect}")
    entry = {"id": key, "title": title, "caption": caption, "numbers": numbers, "seed": seed,
             "attack": attack, "eps": eps, "target": target, "expect": expect}
    if proven is not None:
        if table.certified(seed, eps) != proven:
            raise ValueError(f"lesson {key!r} claims the certificates {proven}, but the "
                             f"measurements say {table.certified(seed, eps)}")
        entry["certified"] = proven
    return entry


def lessons(flips):
    """The page's lessons (a list of dicts) from the measurements `flips`."""
    t = Table(flips)
    std, fgs, rob, ibp = "standard", "adversarial", "pgd", "ibp"
    four, seven, target = 6, 0, 9  # test images 6 (a 4) and 0 (a 7)
    four_is = t.seeds[t.pos(four)]["label"]
    first = {(m, a): t.first_fooled(m, a) for m in (std, fgs, rob) for a in ("fgs", "pgd")}
    held = sum(e is None for e in first[fgs, "fgs"])
    reads = {m: t.reads(m, "targeted_pgd", seven, 0.45, target) for m in (std, fgs, rob, ibp)}
    if set(reads.values()) != {target}:
        raise ValueError(f"lesson 'looks-like' claims every model reads {target}; they read "
                         f"{reads}")
    pairs, reached = t.reached(rob, 0.3)[0], {e: t.reached(rob, e)[1] for e in (0.3, 0.45)}
    if t.reached(std, 0.3) != (pairs, pairs):
        raise ValueError("lesson 'looks-like' claims targeted PGD reaches every target on the "
                         f"standard model at eps 0.3; it reaches {t.reached(std, 0.3)}")
    if proven_up_to(t, std) or proven_up_to(t, fgs):
        raise ValueError("lesson 'proof' claims the bounds certify the standard and FGS-trained "
                         "models nowhere above eps 0")
    return [
        lesson(t, "tiny-step", "A tiny step fools the standard model",
               f"FGS moves each pixel of this {four_is} by at most 0.12, one step along the "
               f"gradient's sign: the standard model now reads {t.reads(std, 'fgs', four, 0.12)};"
               f" the three trained models still read {four_is}.",
               f"Of the {len(t.ready())} ready digits that all four read right, FGS fools the "
               f"standard model {fooled_on(first[std, 'fgs'])}; the PGD-trained model "
               f"{fooled_on(first[rob, 'fgs'])}.",
               four, "fgs", 0.12, claim={std: FOOLED, fgs: RIGHT, rob: RIGHT, ibp: RIGHT}),
        lesson(t, "masking", "FGS training hides the gradient: PGD still breaks it",
               "The same digit and eps, attacked by PGD (20 smaller steps) instead of FGS: the "
               "FGS-trained model falls too. Its training hid the gradient, not the weakness.",
               f"FGS never fools the FGS-trained model on {held} of the {len(t.ready())} ready "
               f"digits, even at eps 0.5; PGD fools it "
               f"{fooled_on(first[fgs, 'pgd'])}, the standard model "
               f"{fooled_on(first[std, 'pgd'])}, the PGD-trained model "
               f"{fooled_on(first[rob, 'pgd'])}.",
               four, "pgd", 0.12, claim={std: FOOLED, fgs: FOOLED, rob: RIGHT, ibp: RIGHT}),
        lesson(t, "looks-like", "The robust model's perturbation looks like a digit",
               f"Targeted PGD toward {target} at eps 0.45: every model reads {target}, but the "
               f"PGD-trained model's perturbation draws the strokes of a {target} on the "
               f"{t.seeds[t.pos(seven)]['label']}; the standard and FGS-trained models' is "
               "faint noise.",
               f"Targeted PGD makes the PGD-trained model read the target for {reached[0.3]} of "
               f"{pairs} (ready digit, target) pairs at its training eps 0.3, for "
               f"{reached[0.45]} at eps 0.45; the standard model reads the target for all "
               f"{pairs} at 0.3.",
               seven, "targeted_pgd", 0.45, target=target,
               claim={std: FOOLED, fgs: FOOLED, rob: FOOLED, ibp: FOOLED}),
        lesson(t, "proof", "A proof, not a failed attack",
               f"PGD at eps 0.3 fails on the PGD-trained and the IBP-trained models alike, but "
               f"only the IBP-trained model's answer is certified: interval bounds prove that no "
               f"change of at most 0.3 per pixel makes it read anything but {four_is}. The "
               "PGD-trained model might yet fall to a stronger attack.",
               f"The bounds certify the IBP-trained model's answer on "
               f"{t.certified_share(ibp, 0.1)} of the {len(t.ready())} ready digits at eps 0.1 "
               f"and {t.certified_share(ibp, 0.3)} at 0.3; the PGD-trained model's on "
               f"{t.certified_share(rob, 0.1)} at 0.1 (none above eps "
               f"{proven_up_to(t, rob):.2f}), the other two models' on none at any eps above 0.",
               four, "pgd", 0.3, claim={std: FOOLED, fgs: FOOLED, rob: RIGHT, ibp: RIGHT},
               proven={std: False, fgs: False, rob: False, ibp: True}),
        {"id": "drawn", "title": "Drawn by you",
         "caption": "Draw a digit in the black box with a mouse, pen or finger: PGD at eps 0.2, "
                    "each model judged against its own answer before the attack.",
         "numbers": "", "seed": None, "attack": "pgd", "eps": 0.2, "target": None,
         "expect": None},
    ]


def main():
    import models
    from web.shipped import served_models

    print("measuring the page's digits on the shipped models", flush=True)
    served, seeds = served_models(list(models.MODELS))
    FLIPS.parent.mkdir(parents=True, exist_ok=True)
    FLIPS.write_text(json.dumps(measure(served, seeds)) + "\n")
    LESSONS.write_text(json.dumps(lessons(json.loads(FLIPS.read_text())), indent=1) + "\n")
    print(f"wrote {FLIPS.relative_to(ROOT)} and {LESSONS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
