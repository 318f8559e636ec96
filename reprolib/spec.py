"""HRank compress-rate specs: ``"[0.1]+[0.60]*35+[0.0]*2"`` <-> per-conv prune rates.

A spec is a ``+``-separated list of terms; a term is ``[r]`` (one layer) or ``[r]*n`` (n layers),
with ``0 <= r < 1`` the share of a conv's filters to prune. ResNet-56 has 55 convs (the stem, then
conv1 and conv2 of each of its 27 blocks, in module order), so its specs have 55 entries.
"""
from __future__ import annotations

import re

_TERM = re.compile(r"^\[\s*([^\]]*?)\s*\](?:\s*\*\s*(\S+))?$")


def parse(spec: str, n_layers: int | None = None) -> list[float]:
    """Per-layer rates of ``spec``; ``ValueError`` naming the bad term, or the expected and given
    lengths when ``n_layers`` is given and differs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty compress-rate spec {spec!r}: expected terms like [0.1]+[0.6]*35")
    spec = spec.strip().strip("$").strip()
    rates: list[float] = []
    for i, raw in enumerate(spec.split("+"), start=1):
        term = raw.strip()
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"malformed term {i} {term!r} in compress-rate spec: expected [rate] or [rate]*count")
        try:
            rate = float(m.group(1))
        except ValueError:
            raise ValueError(f"term {i} {term!r}: rate {m.group(1)!r} is not a number") from None
        if not 0 <= rate < 1:
            raise ValueError(f"term {i} {term!r}: rate {rate} is outside [0, 1)")
        count = 1
        if m.group(2) is not None:
            if not m.group(2).isdigit() or int(m.group(2)) < 1:
                raise ValueError(f"term {i} {term!r}: count {m.group(2)!r} is not a positive integer")
            count = int(m.group(2))
        rates += [rate] * count
    if n_layers is not None and len(rates) != n_layers:
        raise ValueError(f"compress-rate spec has {len(rates)} entries, the model has {n_layers} convs: "
                         f"expected {n_layers}, given {len(rates)}")
    return rates


def format(rates: list[float]) -> str:  # noqa: A001 (mirrors parse)
    """The shortest run-length spec of ``rates``, so that ``parse(format(rates)) == rates``."""
    if not rates:
        raise ValueError("no rates to format")
    terms, i = [], 0
    while i < len(rates):
        j = i
        while j < len(rates) and rates[j] == rates[i]:
            j += 1
        terms.append(f"[{rates[i]!r}]" + (f"*{j - i}" if j - i > 1 else ""))
        i = j
    return "+".join(terms)


def table1() -> dict[int, str]:
    """The seven compress-rate specs of the HRank study's Table 1, row -> spec, in the 55-entry reading:
    the printed 53-entry string + ``+[0.1]+[0.4]``, the ending its Conclusion quotes for row 7."""
    from . import reference
    ref = reference.load("hrank_table1")
    out = {}
    for row, notes in ref.groupby("row")["note"]:
        out[int(row)] = notes.iloc[0].split(": ")[-1] + "+[0.1]+[0.4]"
    return dict(sorted(out.items()))
