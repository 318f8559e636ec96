"""The studies built on the library: one module per chapter, each with its presets (``PRESETS``) and its
runs. ``python -m reprolib.experiments.<name> --profile budget`` computes (or reads) one study's runs.

``NAMES``: the studies whose runs the book's chapters read (``reprolib.sweep all`` computes them).
``SURVEY``: the survey methods of issue 19, measured at the smoke and budget profiles only; their runs are
computed by name (``python -m reprolib.sweep survey_dynamic``) and enter the chapters as they are committed."""

NAMES = ("baseline", "hrank", "structural", "thinet_vs_gradient", "criteria_benchmark", "weight_pruning")
SURVEY = ("survey_structured", "survey_regularisers", "survey_dynamic", "survey_elementwise")
