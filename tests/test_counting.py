import logging
import warnings

import pytest
import torch
import torch.nn as nn

from reprolib.counting import count, latency, latency_interleaved, latency_table
from reprolib.models import create

RESNET56_HRANK = (848_954, 125_485_706)  # HRank's Table: 0.85M params, 125.49M FLOPs, to the unit


def test_resnet56_hrank_convention_gives_hranks_numbers_exactly():
    c = count(create("resnet56"), (1, 3, 32, 32), convention="hrank")
    assert (c["params"], c["flops"]) == RESNET56_HRANK


def test_hrank_rates_all_zero_is_the_unpruned_count():
    c = count(create("resnet56"), (1, 3, 32, 32), convention="hrank", rates=[0.0] * 55)
    assert (c["params"], c["flops"]) == RESNET56_HRANK


@pytest.mark.parametrize("rate,kept", [(0.25, 8), (0.35, 7), (0.99, 1)])  # floor(2.5), floor(3.5), floor(9.9)
def test_hrank_single_conv_floors_the_pruned_channels(rate, kept):
    m = nn.Sequential(nn.Conv2d(4, 10, 3, padding=1, bias=False))
    c = count(m, (1, 4, 8, 8), convention="hrank", rates=[rate])
    assert c["params"] == 4 * kept * 9
    assert c["flops"] == 4 * kept * 9 * 64


def test_hrank_conv_bias_is_a_parameter_but_not_a_flop():
    # HRank's get_flops.py scales every conv parameter tensor (bias too) by the kept fraction
    # and counts conv FLOPs from the weights alone.
    m = nn.Sequential(nn.Conv2d(4, 10, 3, padding=1, bias=True))
    c = count(m, (1, 4, 8, 8), convention="hrank", rates=[0.25])
    assert (c["params"], c["flops"]) == (4 * 8 * 9 + 8, 4 * 8 * 9 * 64)


def test_hrank_vgg16_params_match_the_paper():
    c = count(create("vgg16"), (1, 3, 32, 32), convention="hrank")
    assert c["params"] == 14_982_474  # conv weights + conv biases + both FC layers: HRank's 14.98M
    assert c["flops"] == 313_464_330  # what HRank's get_flops.py rule gives (its paper prints 313.73M)


def test_hrank_resnet56_half_rates_match_a_count_from_the_architecture():
    # Independent count: 3 stages of 9 blocks with 16/32/64 planes at 32/16/8 pixels; every conv
    # keeps planes - floor(planes / 2) filters and ALL its input channels; fc 64->10 with bias.
    def kept(c):
        return c - int(0.5 * c)
    params, flops = 3 * kept(16) * 9, 3 * kept(16) * 9 * 32 * 32  # stem conv
    cin = 16
    for planes, side in ((16, 32), (32, 16), (64, 8)):
        for _ in range(9):
            for conv_in in (cin, planes):  # conv1 sees the block input, conv2 the block's width
                params += conv_in * kept(planes) * 9
                flops += conv_in * kept(planes) * 9 * side * side
            cin = planes
    params, flops = params + 64 * 10 + 10, flops + 64 * 10 + 10
    c = count(create("resnet56"), (1, 3, 32, 32), convention="hrank", rates=[0.5] * 55)
    assert (c["params"], c["flops"]) == (params, flops)
    assert c["flops"] < RESNET56_HRANK[1] // 2 + 1000  # about half


@pytest.mark.parametrize("rates,match", [
    ([0.5] * 54, r"expected 55 rates \(one per conv\), got 54"),
    ([0.5] * 56, r"expected 55 rates \(one per conv\), got 56"),
    ([0.0] * 10 + [1.0] + [0.0] * 44, r"rates\[10\] = 1.0 is outside \[0, 1\)"),
    ([-0.1] + [0.0] * 54, r"rates\[0\] = -0.1 is outside \[0, 1\)"),
])
def test_bad_rates_are_rejected_with_the_problem_named(rates, match):
    with pytest.raises(ValueError, match=match):
        count(create("resnet56"), (1, 3, 32, 32), convention="hrank", rates=rates)


def test_unknown_convention_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown convention 'thop'.*true.*hrank"):
        count(nn.Linear(2, 2), (1, 2), convention="thop")


def _fvcore(model, input_size):
    """fvcore's parameter count and its per-operator FLOPs, with its warnings silenced."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import uses the deprecated torch.jit.script
        from fvcore.nn import FlopCountAnalysis, parameter_count
        flops = FlopCountAnalysis(model.eval(), torch.zeros(input_size))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return parameter_count(model)[""], flops.by_operator()


@pytest.mark.parametrize("name,input_size", [
    ("resnet56", (1, 3, 32, 32)), ("vgg16", (1, 3, 32, 32)), ("resnet50", (1, 3, 224, 224))])
def test_true_convention_agrees_with_fvcore(name, input_size):
    # Compared: (1) parameter totals, exactly; (2) conv + linear MACs without bias adds (fvcore
    # ignores biases) against fvcore's 'conv' + 'linear' (+ 'addmm', older traces) operators, exactly;
    # (3) our separate BN count against fvcore's 'batch_norm'. Not compared: fvcore's
    # 'adaptive_avg_pool2d', which our ``flops`` leaves out by design.
    torch.manual_seed(0)
    model = create(name)
    fv_params, fv_ops = _fvcore(model, input_size)
    c = count(model, input_size)
    assert c["params"] == fv_params == sum(p.numel() for p in model.parameters())
    weight_macs = sum(l["flops"] - l["bias_flops"] for l in c["layers"])
    assert weight_macs == fv_ops["conv"] + fv_ops.get("linear", 0) + fv_ops.get("addmm", 0)
    assert c["norm_flops"] == fv_ops["batch_norm"]
    # and the bias adds on top are exactly one per output element of every biased layer
    assert c["flops"] - weight_macs == sum(l["bias_flops"] for l in c["layers"]) > 0


def test_true_convention_counts_biases_and_bn():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    c = count(m, (2, 3, 4, 4))
    conv = 3 * 8 * 9 * 2 * 16 + 8 * 2 * 16  # MACs + bias adds, batch of 2
    fc = 128 * 5 * 2 + 5 * 2
    assert c["flops"] == conv + fc
    assert c["params"] == 3 * 8 * 9 + 8 + 2 * 8 + 128 * 5 + 5
    assert c["norm_flops"] == 2 * 8 * 16 * 2
    assert [l["type"] for l in c["layers"]] == ["Conv2d", "Linear"]


def test_conv_activations_count_every_conv_input_and_output():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                      nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    c = count(m, (2, 3, 4, 4))
    # conv 1 reads 2x3x4x4 and writes 2x8x4x4; conv 2 reads that and writes 2x4x2x2; the Linear is not a conv
    assert c["conv_activations"] == 96 + 256 + 256 + 32
    assert "conv_activations" not in count(m, (2, 3, 4, 4), convention="hrank")


def test_conv_activations_fall_linearly_where_flops_fall_quadratically():
    chain = lambda w: nn.Sequential(nn.Conv2d(16, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1),
                                    nn.Conv2d(w, 16, 3, padding=1))
    wide, narrow = count(chain(16), (1, 16, 8, 8)), count(chain(8), (1, 16, 8, 8))
    # MACs: 16w + w^2 + 16w per pixel x 9; activations: 16 + w + w + w + w + 16 per pixel
    assert wide["conv_activations"] / narrow["conv_activations"] == (16 * 2 + 16 * 4) / (16 * 2 + 8 * 4)
    assert (wide["flops"] - 3 * 16 * 64) / (narrow["flops"] - (8 + 8 + 16) * 64) == (3 * 256) / (2 * 128 + 64)


def test_true_convention_smaller_conv_costs_less():
    small = count(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), (1, 3, 16, 16))
    big = count(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1)), (1, 3, 16, 16))
    assert 0 < small["flops"] < big["flops"] and small["params"] < big["params"]


def test_count_restores_training_mode():
    m = create("resnet20").train()
    count(m, (1, 3, 32, 32))
    assert m.training


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_latency_reports_positive_ordered_times_batch_and_threads():
    before = torch.get_num_threads()
    r = latency(_tiny(), (2, 3, 8, 8), repeats=3, warmup=1, threads=1)
    assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert (r["batch_size"], r["threads"], r["repeats"]) == (2, 1, 3)
    assert torch.get_num_threads() == before


def test_latency_interleaved_times_every_model():
    out = latency_interleaved({"a": _tiny(), "b": _tiny()}, (1, 3, 8, 8), repeats=3, warmup=1)
    assert set(out) == {"a", "b"}
    for r in out.values():
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["repeats"] == 3
        assert r["threads"] == torch.get_num_threads() and r["batch_size"] == 1


def test_latency_table_has_one_median_per_model_and_batch():
    small, big = _tiny(), nn.Sequential(nn.Conv2d(3, 256, 3), nn.Conv2d(256, 256, 3), nn.Flatten(), nn.Linear(256 * 4 * 4, 2))
    rows, threads = latency_table({"small": small, "big": big}, [1, 16], repeats=3, warmup=1, image=(3, 8, 8))
    assert set(rows) == {"small", "big"} and threads == torch.get_num_threads()
    assert all(set(r) == {"ms_b1", "ms_b16"} for r in rows.values())
    # 16 images through ~150x the multiply-adds: no scheduling noise makes that faster than one small pass
    assert rows["big"]["ms_b16"] > rows["small"]["ms_b1"] > 0
