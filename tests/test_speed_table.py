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


def test_speed_table_divides_the_speed_up_by_the_activation_ratio_where_recorded():
    b = _bench()
    assert "activation ratio" not in structural.speed_table(b, 128)  # results written before the column existed
    b["rows"][0]["activation_ratio"] = {"dense": 1.0, "shrunk": 2.0}
    r = structural.speed_table(b, 128).iloc[0]
    assert r["activation ratio"] == 2.0 and r["best / activation ratio"] == pytest.approx(1.25)


def _widths(ms_by_width, size=32, dense=16):
    return {"conv_widths": [{"size": size, "dense_channels": dense, "channels": c, "ms": ms} for c, ms in ms_by_width.items()]}


def test_width_scaling_puts_time_beside_width_and_flops_fractions():
    # time proportional to the width at 8 channels (2.0 of 4.0 ms), flat above 16 at 17 channels
    w = structural.width_scaling({"conv_widths": _widths({16: 4.0, 8: 2.0})["conv_widths"]
                                  + _widths({32: 6.0, 17: 6.0}, size=16, dense=32)["conv_widths"]})
    r = w.set_index(["size", "width"])
    assert r.loc[(32, 8), "width fraction"] == 0.5 and r.loc[(32, 8), "FLOPs fraction"] == 0.25
    assert r.loc[(32, 8), "time fraction"] == 0.5 and r.loc[(32, 8), "time / width fraction"] == 1.0
    assert r.loc[(16, 17), "time fraction"] == 1.0 and r.loc[(16, 17), "width fraction"] == pytest.approx(17 / 32)
    assert list(w["size"]) == [32, 32, 16, 16]


def test_width_scaling_names_what_is_missing():
    with pytest.raises(ValueError, match="no 'conv_widths'"):
        structural.width_scaling({"rows": []})
    with pytest.raises(ValueError, match="dense width at map sizes \\[32\\]"):
        structural.width_scaling(_widths({8: 2.0}))
