"""deploy: a shrunk network exported to ONNX computes what PyTorch computes, without scatter operators."""
import pytest
import torch
import torch.nn as nn

from reprolib import deploy, surgery
from reprolib.models import create


def shrunk_resnet20():
    torch.manual_seed(0)
    model = create("resnet20")
    for mod in model.modules():  # random BN statistics, so that folding them is really tested
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.2, 0.6)
            mod.bias.data.normal_(0, 0.3)
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(m.out_channels, generator=g) < 0.5 for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d)}
    for keep in masks.values():
        keep[0] = True
    return model.eval(), surgery.shrink(model.eval(), masks)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, small = shrunk_resnet20()
    path = deploy.export(small, tmp_path_factory.mktemp("onnx") / "small.onnx")  # checks itself (atol 1e-4)
    return model, small, path


def test_export_matches_pytorch_at_other_batch_sizes(exported):
    model, small, path = exported
    sess = deploy.session(path, threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = small(x)
        got = deploy.OrtModule(sess)(x)
        assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-4


def test_indexation_additions_export_as_gathers_and_pads_not_scatters(exported):
    _, small, path = exported
    ops = deploy.op_counts(path)
    assert not any(op.startswith("Scatter") for op in ops), ops
    assert "BatchNormalization" not in ops and ops["Conv"] == 19
    n_partial = sum(1 for m in small.modules() if isinstance(m, surgery.IndexAdd) and not (m.a_whole and m.b_whole))
    assert n_partial > 0 and ops.get("Gather", 0) + ops.get("Pad", 0) >= n_partial


def test_a_wrong_export_is_refused_with_both_numbers(exported):
    model, _, path = exported
    with pytest.raises(deploy.MismatchError, match=r"differ by .* more than atol=0.0001"):
        deploy.compare(model, path, (2, 3, 32, 32))  # the dense network is not what was exported


def test_latency_and_bad_arguments(exported):
    _, _, path = exported
    t = deploy.latency(deploy.session(path, threads=1), (2, 3, 32, 32), repeats=2, warmup=1)
    assert t["median_ms"] > 0 and t["threads"] == 1 and t["batch_size"] == 2 and t["repeats"] == 2
    with pytest.raises(ValueError, match="threads must be >= 1"):
        deploy.session(path, threads=0)
    with pytest.raises(ValueError, match="fp32 model"):
        deploy.export(create("resnet20").double(), path.with_name("x.onnx"))
