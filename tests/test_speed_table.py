"""structural.speed_table: prune_speed.py's results read into the chapter's table."""
import pytest

from reprolib.experiments import structural


def _bench():
    # dense 100 ms eager / 50 ms ORT; shrunk 40 eager (fastest: fused) / 20 ORT; FLOPs ratio 4
    eager = {"dense|fold|fp32": 100.0, "shrunk|fold|fp32": 60.0, "shrunk|fold+fuse|fp32": 40.0}
    ort = {"dense|fold|fp32": 50.0, "shrunk|fold|fp32": 20.0}
    best = {"dense": {"label": "dense|fold|fp32|ort", "ms": 50.0},
            "shrunk": {"label": "shrunk|fold|fp32|ort", "ms": 20.0}}
    speedup = {"eager": {"dense": 1.0, "shrunk": 100 / 40}, "ort": {"dense": 1.0, "shrunk": 50 / 20},
               "best": {"dense": 1.0, "shrunk": 50 / 20}}
    return {"batches": [128], "rows": [{"row": 3, "flops_ratio": {"dense": 1.0, "shrunk": 4.0}, "params": {"dense": 10, "shrunk": 4},
                      "b128": {"eager_ms": eager, "ort_ms": ort, "best": best, "speedup": speedup}}]}


def test_speed_table_divides_speed_up_by_the_flops_ratio_and_skips_dense():
    t = structural.speed_table(_bench(), 128)
    assert list(t["network"]) == ["shrunk"]
    r = t.iloc[0]
    assert r["row"] == 3 and r["FLOPs ratio"] == 4.0 and r["params"] == 4
    assert r["speed-up eager"] == pytest.approx(2.5) and r["eager / FLOPs ratio"] == pytest.approx(0.625)
    assert r["best / FLOPs ratio"] == pytest.approx(0.625) and r["fastest"] == "shrunk|fold|fp32|ort"


def test_speed_table_names_a_missing_batch():
    with pytest.raises(ValueError, match=r"batch sizes \[128\], not 1.*--batches 1"):
        structural.speed_table(_bench(), 1)
