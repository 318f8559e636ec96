"""Tag the parameter cells of executed chapters ``remove-cell``, so that the book does not show papermill's
plumbing (the notebook's ``parameters`` cell and the ``injected-parameters`` cell papermill adds); each chapter
prints its profile in its first output instead.

    python book/remove_parameter_cells.py book/generated/*.ipynb
"""
import json
import sys

PLUMBING = {"parameters", "injected-parameters"}

for path in sys.argv[1:]:
    with open(path) as f:
        nb = json.load(f)
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if PLUMBING & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
