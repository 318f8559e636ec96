"""The profile mechanism: ``smoke`` (seconds, tiny data; CI), ``budget`` (the experiment scaled to 2 CPU
cores; what the book shows), ``paper`` (the source document's protocol; for a GPU). Each study keeps its
presets beside its code (``reprolib.experiments.<name>.PRESETS``); ``get`` returns one of them.

A notebook's ``profile`` parameter defaults to ``$REPROLIB_PROFILE``, else ``budget``.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os

PROFILES = ("smoke", "budget", "paper")

def presets(experiment: str) -> dict:
    """The ``PRESETS`` of ``reprolib.experiments.<experiment>``: each study keeps its own, beside its code."""
    from .experiments import NAMES, SURVEY
    if experiment not in NAMES + SURVEY:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(sorted(NAMES + SURVEY))}")
    return importlib.import_module(f"reprolib.experiments.{experiment}").PRESETS


def default_profile() -> str:
    return os.environ.get("REPROLIB_PROFILE", "budget")


def get(experiment: str, profile: str | None = None) -> dict:
    """The config dict of ``experiment`` under ``profile`` (a fresh copy, with ``profile`` in it)."""
    profile = profile or default_profile()
    table = presets(experiment)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if profile not in table:
        raise NoPresetError(f"study {experiment!r} has no {profile!r} preset (it has {', '.join(table)}): "
                            "it is measured at those profiles only")
    return dict(copy.deepcopy(table[profile]), profile=profile)


class NoPresetError(ValueError):
    """A study that is not run at the asked profile (e.g. the survey methods have no ``paper`` preset)."""


class _Parser(argparse.ArgumentParser):
    """Also checks ``$REPROLIB_DEVICE`` when parsing: a bad value ends the command with one line naming the
    variable, before anything is loaded or trained (a cached run would never reach the device)."""

    def parse_known_args(self, *args, **kwargs):
        from . import device
        parsed = super().parse_known_args(*args, **kwargs)
        try:
            device.current()
        except device.DeviceError as e:
            self.exit(2, f"error: {e}\n")
        return parsed


def cli_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line of an experiment module (``python -m reprolib.experiments.<name> --profile budget``)."""
    ap = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, choices=PROFILES)
    return ap
