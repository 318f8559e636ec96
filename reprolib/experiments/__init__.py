"""The studies built on the library: one module per chapter, each with its presets (``PRESETS``) and its
runs. ``python -m reprolib.experiments.<name> --profile budget`` computes (or reads) one study's runs."""

NAMES = ("baseline", "hrank", "structural", "thinet_vs_gradient", "criteria_benchmark", "weight_pruning")
