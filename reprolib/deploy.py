"""Deployment of a (shrunk) network to ONNX Runtime: export, check against PyTorch, time.

    path = deploy.export(small, "net.onnx")               # BN folded, checked against PyTorch
    sess = deploy.session(path, threads=2)
    deploy.latency(sess, (128, 3, 32, 32))                # {median_ms, p10_ms, p90_ms, ...}

The export goes through ``torch.onnx.export`` (the dynamo exporter) with a dynamic batch dimension.
BatchNorms are folded into their convolutions first (``surgery.fold_bn``), and the shrunk
network's indexation-additions export as zero-padding and channel gathers (``IndexAdd``'s export
plan): ONNX's scatter operators, which a plain ``index_add`` becomes, are slow in ONNX Runtime
(they made a shrunk ResNet-56 slower than the dense one there).
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .surgery.fold import fold_bn


class MismatchError(ValueError):
    """The ONNX Runtime outputs differ from PyTorch's by more than the tolerance."""


def _quiet():
    """The exporter prints progress lines and warnings for every model; keep them off the console."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def export(model: nn.Module, path, input_size: Sequence[int] = (1, 3, 32, 32), *, fold: bool = True,
           check: bool = True, atol: float = 1e-4, threads: int = 1) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) to ``path`` as ONNX with a dynamic batch dimension.

    ``fold``: fold BatchNorms into convolutions first (inference only). ``check``: run the file in
    ONNX Runtime on a seeded random input of ``input_size`` (batch 2 if ``input_size`` has batch 1,
    to exercise the dynamic batch) and raise ``MismatchError`` if any output differs from the
    PyTorch model's by more than ``atol`` (times the outputs' largest magnitude where that exceeds 1:
    float rounding grows with it, e.g. in an untrained deep ResNet). Returns the path."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("export a CPU model: call model.cpu() first (ONNX Runtime runs here on the CPU)")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("export an fp32 model: call model.float() first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = fold_bn(model) if fold else model.eval()
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(path))
    if check:
        size = (max(int(input_size[0]), 2), *input_size[1:])
        compare(model, path, size, atol=atol, threads=threads)
    return path


def session(path, threads: int = 1, spin: bool = False):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads (one inter-op thread,
    all graph optimisations). ``spin=False`` turns off the spinning of idle worker threads: timed
    side by side with PyTorch, a spinning pool would steal the cores PyTorch's threads then run on."""
    import onnxruntime as ort
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compare(model: nn.Module, path, input_size: Sequence[int], *, atol: float = 1e-4, threads: int = 1) -> float:
    """Max absolute difference between ``model`` (eval) and the ONNX file on a seeded random input;
    ``MismatchError`` naming both numbers if it exceeds ``atol * max(1, max |output|)``."""
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.eval()(x).numpy()
    sess = session(path, threads)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != want.shape:
        raise MismatchError(f"{path}: ONNX Runtime output has shape {got.shape}, PyTorch {want.shape}")
    diff, scale = float(np.abs(got - want).max()), max(1.0, float(np.abs(want).max()))
    if not diff <= atol * scale:  # also catches NaN
        raise MismatchError(f"{path}: ONNX Runtime and PyTorch outputs differ by {diff:.3g} (max abs) on an input of "
                            f"shape {tuple(input_size)}, more than atol={atol:g} x {scale:.3g} (the outputs' largest "
                            "magnitude, at least 1); the export changed the function")
    return diff


class OrtModule(nn.Module):
    """An ONNX Runtime session as a module (``forward``: torch tensor in, torch tensor out), so that
    it can be timed round-robin with PyTorch models by ``counting.latency_interleaved``."""

    def __init__(self, sess):
        super().__init__()
        self.sess, self.input = sess, sess.get_inputs()[0].name

    def forward(self, x):
        return torch.from_numpy(self.sess.run(None, {self.input: x.contiguous().numpy()})[0])


def latency(sess, input_size: Sequence[int], *, repeats: int = 20, warmup: int = 5) -> dict:
    """Latency of one ONNX Runtime session: ``{median_ms, p10_ms, p90_ms, batch_size, threads, repeats}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(tuple(input_size), dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, x)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, x)
        seconds.append(time.perf_counter() - t0)
    ms = np.asarray(seconds) * 1e3
    threads = int(sess.get_session_options().intra_op_num_threads)
    return dict(median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
                p90_ms=float(np.percentile(ms, 90)), batch_size=int(input_size[0]), threads=threads, repeats=repeats)


def op_counts(path) -> dict[str, int]:
    """How many nodes of each ONNX operator type the file's graph has (e.g. to check for scatters)."""
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
