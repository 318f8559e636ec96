"""environment.yml (conda / Binder) lists the same dependencies as pyproject.toml (uv)."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _norm(reqs):
    out = {}
    for r in reqs:
        req = Requirement(r)
        out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = _norm(project["project"]["dependencies"] + project["dependency-groups"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _norm(p for p in pip if not p.startswith("-e"))
    assert listed == wanted
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert py.replace("python", "") == project["project"]["requires-python"]


def test_lock_pins_torch_and_torchvision_from_the_registry():
    lock = (REPO / "uv.lock").read_text()
    assert 'name = "torch"\nversion = "2.13.' in lock and 'name = "torchvision"\nversion = "0.28.' in lock
    assert "+cpu" not in lock  # the machine's local CPU-only wheel has no torchvision to match
