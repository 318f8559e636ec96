import pytest


@pytest.fixture(autouse=True)
def isolated_results(tmp_path, monkeypatch):
    """Every test writes results and checkpoints into its own temporary folders."""
    monkeypatch.setenv("REPROLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPROLIB_CACHED_ONLY", raising=False)
