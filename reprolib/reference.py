"""The papers' numbers, transcribed by hand: ``data/reference/<name>.csv``.

One row per number, with its source (see ``data/reference/README.md``)::

    document,table,row,model,dataset,metric,value,note

These numbers are only ever shown as "paper"; ours come from ``data/results/``.
``$REPROLIB_REFERENCE`` moves the folder (the tests use a temporary one).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent

COLUMNS = ("document", "table", "row", "model", "dataset", "metric", "value", "note")
OPTIONAL = ("note",)  # the only column whose cells may be empty

# Seeds file -> its key in book/references.bib, for {cite} in the chapters.
CITATIONS = {
    "hrank-resnet56-study.txt": "lu2023hrankstudy",
    "pruning-techniques-analysis.txt": "qin_pruninganalysis",
    "structured-pruning-not-so-obvious-effects.txt": "tessier2022notsoobvious",
    "thinet-vs-gradient-pruning.txt": "otlu2020cmpe544",
    "summary-of-pruning.txt": "shangyu2019summary",
}


def reference_dir() -> Path:
    return Path(os.environ.get("REPROLIB_REFERENCE", REPO / "data" / "reference"))


def available() -> list[str]:
    """The names of the transcribed tables (``<name>.csv`` without the suffix), sorted."""
    folder = reference_dir()
    return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []


def load(name: str) -> pd.DataFrame:
    """The transcribed table ``name`` as a DataFrame: text columns as str, ``value`` as float.

    Raises FileNotFoundError (listing the available tables) if there is no such table, and
    ValueError naming the file and line if a required column is missing, a required cell is empty
    or a value is not a number.
    """
    stem = name[:-4] if name.endswith(".csv") else name
    path = reference_dir() / f"{stem}.csv"
    if not path.is_file():
        tables = available()
        raise FileNotFoundError(
            f"no reference table {stem!r}: {path} does not exist; available tables in "
            f"{reference_dir()}: {', '.join(tables) if tables else '(none)'}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}; "
                         f"required: {', '.join(COLUMNS)}; found: {', '.join(map(str, df.columns))}")
    for col in COLUMNS:
        if col in OPTIONAL:
            continue
        empty = [i + 2 for i in df.index[df[col].str.strip() == ""]]  # line 1 is the header
        if empty:
            raise ValueError(f"{path}: empty {col!r} on line(s) {', '.join(map(str, empty))}")
    values = pd.to_numeric(df["value"].str.strip(), errors="coerce")
    bad = df.index[values.isna()]
    if len(bad):
        where = ", ".join(f"line {i + 2} ({df.at[i, 'value']!r})" for i in bad)
        raise ValueError(f"{path}: 'value' is not a number on {where}")
    df["value"] = values.astype(float)
    return df
