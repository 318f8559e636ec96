"""The reproduction summary: each number of the documents that a chapter sets beside one of ours, the
difference, the protocol we ran and a verdict, over the whole book.

Each study module may define ``comparisons(profile) -> list[Row]``, built from its committed results
only (``plan.committed``: nothing is trained to fill the table) and from ``data/reference/``. A chapter's
"what reproduced" box and the summary page both read these rows, so they cannot disagree.

Verdicts: ``reproduced`` (within the tolerance the row states), ``not reproduced``, ``not comparable``
(the protocols differ in a way that moves the number; ``why`` says how), ``not run yet`` (its runs are not
committed). Tolerances are ours and are printed with each row.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import asdict, dataclass

import pandas as pd

VERDICTS = ("reproduced", "not reproduced", "not comparable", "not run yet")


@dataclass(frozen=True)
class Row:
    chapter: str           # notebook name
    what: str              # the quantity or the claim, and where the document gives it
    paper: float | str | None
    ours: float | str | None
    protocol: str          # what we ran: profile, epochs, images, seeds
    verdict: str
    why: str = ""          # the tolerance, or what makes the numbers not comparable

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    @property
    def difference(self) -> float | None:
        ok = all(isinstance(v, (int, float)) and not math.isnan(v) for v in (self.paper, self.ours))
        return self.ours - self.paper if ok else None


def judge(paper: float, ours: float | None, tol: float) -> str:
    """``reproduced`` when ``|ours - paper| <= tol``, else ``not reproduced``; ``not run yet`` without ours."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return "not run yet"
    return "reproduced" if abs(ours - paper) <= tol + 1e-12 else "not reproduced"


def rows(profile: str | None = None, chapters: list[str] | None = None) -> list[Row]:
    """The rows of every study that has ``comparisons`` (or of ``chapters`` only), in the book's order."""
    from .experiments import NAMES
    out = []
    for name in NAMES:
        module = importlib.import_module(f"reprolib.experiments.{name}")
        fn = getattr(module, "comparisons", None)
        if fn is None:
            continue
        out += [r for r in fn(profile) if chapters is None or r.chapter in chapters]
    return out


def frame(rs: list[Row]) -> pd.DataFrame:
    df = pd.DataFrame([{**asdict(r), "difference": r.difference} for r in rs],
                      columns=["chapter", "what", "paper", "ours", "difference", "protocol", "verdict", "why"])
    return df


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s table as text for a page: the paper's numbers as printed, ours and the difference at the
    paper's decimals (``fmt``), so that 70.5133 reads 70.51 beside a paper's 92.57."""
    like = df["paper"]
    return df.assign(paper=like.map(fmt), ours=[fmt(v, like=p) for v, p in zip(df["ours"], like)],
                     difference=[fmt(v, like=p) for v, p in zip(df["difference"], like)])


def box(chapter: str, profile: str | None = None) -> str:
    """A chapter's opening box (MyST admonition): its rows' verdicts in one list, numbers from the results."""
    rs = rows(profile, [chapter])
    if not rs:
        return ""
    counts = pd.Series([r.verdict for r in rs]).value_counts()
    head = ", ".join(f"{n} {v}" for v, n in counts.items())
    lines = [f"- **{r.verdict}**: {r.what}: paper {fmt(r.paper)}, ours {fmt(r.ours, like=r.paper)}"
             + (f" ({r.why})" if r.why else "") for r in rs]
    return "```{admonition} What reproduced, what did not\n" + f"{len(rs)} comparisons: {head}.\n\n" \
        + "\n".join(lines) + "\n\nThe [reproduction summary](summary.ipynb) lists every chapter's.\n```"


def fmt(v, like=None) -> str:
    """``v`` for a sentence; with ``like`` (the paper's number), a float ours at the paper's decimals (at least 2)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and isinstance(like, (int, float)) and abs(v) < 1000:
        def places(x):  # decimals of x as printed; float noise (71.05 - 68.97) is cut at 10 significant digits
            text = f"{float(x):.10g}"
            return len(text.split(".")[1]) if "." in text and "e" not in text else 2
        own = places(v)  # a short number of ours (a rate, 0.005) is never rounded away; a long one is
        return f"{v:.{max(2, places(like), own if own <= 3 else 0)}f}"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
