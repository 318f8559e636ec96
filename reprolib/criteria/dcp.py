"""DCP: discrimination-aware channel pruning (Zhuang, Tan, Zhuang, Liu, Guo, Wu, Huang, Zhu, NeurIPS 2018; the
summary's Section 4.4 and its greedy Algorithm, Eqs. 16-17).

The network is cut into P + 1 segments by P auxiliary classifiers (each BN -> ReLU -> global average pooling -> FC,
as the authors' ``AuxClassifier``); the last segment's loss is the network's own classifier. For a conv ``B`` (the
consumer of the pruned layer ``A``'s filters, see ``channels``), all of ``B``'s input channels are first removed
(its kernels set to zero); then, greedily, the channel whose kernels have the largest gradient norm of the joint loss

    L(W) = mse_weight * L_M(W) + softmax_weight * L_S^p(W)

joins the kept set, its kernels warm-started from the trained ones, and the kept kernels are refit by SGD with the
others held at zero (Eq. 16). ``L_M`` is the mean squared error between ``B``'s output and the trained network's
(the reconstruction loss), ``L_S^p`` the cross-entropy of the classifier that ends ``B``'s segment (the
discrimination-aware loss). As in the authors' code: the gradient norm of channel j is the sum over filters of the
Frobenius norms of its k x k kernel gradients; both weights are 1 (their lambda = 1); the subproblem is one pass of
SGD over the data (lr 0.01, momentum 0.9, Nesterov, weight decay 1e-4), the BN statistics frozen (eval mode).

Registry (``criteria.get("dcp")``): filter j of ``A`` scores ``C - (position of channel j in B's greedy order)``,
the selection run to the end so that every rate has its ranking (DCP itself stops at the rate, or at Eq. 17's
relative decrease of the loss, which its CIFAR code does not use). Reduced, ours, to keep the cost at a few
minutes on a CPU: P = 2 auxiliary losses (after the first two stages of a CIFAR ResNet; the authors insert 3 in
ResNet-56), and only the auxiliary heads are trained, on the same few batches, the network frozen (DCP first
fine-tunes the whole network with the auxiliary losses, 100 epochs on CIFAR-10); each layer is selected on the
trained network with the others unpruned (DCP prunes layer after layer, each seeing the previous ones pruned)
and the refit kernels are not kept (the benchmark fine-tunes every criterion alike).
"""
from __future__ import annotations

import itertools

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import register, replayable
from .channels import consumers
from .filters import _call_of


class AuxClassifier(nn.Module):
    """DCP's auxiliary head: BN -> ReLU -> global average pooling -> FC."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm2d(channels), nn.Linear(channels, classes)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


# --------------------------------------------------------------------------- cutting the graph

def default_aux_points(model: nn.Module) -> list[str]:
    """Where the auxiliary heads read (names of traced modules): the last module of each stage but the last of a
    model with stages ``layer1``, ``layer2``, ... (a CIFAR ResNet: after ``layer1`` and ``layer2``, P = 2); none
    otherwise (only the network's classifier)."""
    stages = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    if len(stages) < 2:
        return []
    nodes = [n for n in fx.symbolic_trace(model).graph.nodes if n.op == "call_module"]
    out = []
    for s in sorted(stages, key=lambda n: int(n[5:]))[:-1]:
        inside = [n.target for n in nodes if n.target.startswith(s + ".")]
        if inside:
            out.append(inside[-1])
    return out


class Split(nn.Module):
    """A traced model cut at conv ``B``: ``prefix(x)`` returns the tensors still needed after ``B`` (B's input
    first); ``suffix(*live, weight)`` runs ``B`` with ``weight`` instead of its own and everything from there to the
    ``end`` node, returning ``(end value, B's output)``."""

    def __init__(self, model: nn.Module, conv: str, end: str | None):
        super().__init__()
        gm = fx.symbolic_trace(model)
        nodes = list(gm.graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        cnode = _call_of(gm.graph, conv)
        out_node = next(n for n in nodes if n.op == "output")
        end_node = out_node.args[0] if end is None else _call_of(gm.graph, end)
        if not isinstance(end_node, fx.Node) or pos[end_node] < pos[cnode]:
            raise ValueError(f"the loss point {end!r} comes before {conv!r}: it cannot see that conv's channels")
        after = set()                                          # nodes from B to the end that the end needs
        stack = [end_node]
        while stack:
            n = stack.pop()
            if n in after or pos[n] < pos[cnode]:
                continue
            after.add(n)
            stack.extend(a for a in n.all_input_nodes)
        if cnode not in after:
            raise ValueError(f"{end or 'the output'} does not depend on {conv!r}")
        live = sorted({a for n in after for a in n.all_input_nodes if pos[a] < pos[cnode]}, key=pos.get)
        live.remove(cnode.args[0])
        live.insert(0, cnode.args[0])
        self.n_live = len(live)
        self.conv = gm.get_submodule(conv)

        pre = fx.Graph()                                        # prefix: input -> live tensors
        env = {}
        needed, stack = set(), list(live)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        for n in nodes:
            if n in needed:
                env[n] = pre.node_copy(n, lambda a: env[a])
        pre.output(tuple(env[n] for n in live))
        self.prefix = fx.GraphModule(gm, pre)

        suf = fx.Graph()                                        # suffix: live tensors, weight -> end, B's output
        env = {n: suf.placeholder(f"live_{i}") for i, n in enumerate(live)}
        weight = suf.placeholder("weight")
        c = self.conv
        for n in nodes:
            if n not in after:
                continue
            if n is cnode:
                bias = suf.get_attr(f"{conv}.bias") if c.bias is not None else None
                env[n] = suf.call_function(F.conv2d, (env[n.args[0]], weight, bias, c.stride, c.padding,
                                                       c.dilation, c.groups))
            else:
                env[n] = suf.node_copy(n, lambda a: env[a])
        suf.output((env[end_node], env[cnode]))
        self.suffix = fx.GraphModule(gm, suf)


# --------------------------------------------------------------------------- the criterion

def _device(model):
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_heads(model: nn.Module, aux_points: list[str], batches, *, classes: int, epochs: int = 20,
                lr: float = 0.1, seed: int = 0) -> dict[str, AuxClassifier]:
    """DCP's auxiliary heads on the frozen network's features at ``aux_points`` (ours: the network itself is not
    fine-tuned), SGD (momentum 0.9, Nesterov, weight decay 1e-4, the authors' settings) for ``epochs`` passes over
    the batches, lr cosine-decayed."""
    if not aux_points:
        return {}
    dev = _device(model)
    feats = {p: [] for p in aux_points}
    labels = []
    handles = [model.get_submodule(p).register_forward_hook(
        lambda m, i, o, p=p: feats[p].append(o.detach().clone())) for p in aux_points]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                model(x.to(dev))
                labels.append(y.to(dev))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    with torch.random.fork_rng(devices=[]):                 # seeded heads, the caller's random state untouched
        torch.manual_seed(seed)
        heads = {p: AuxClassifier(feats[p][0].shape[1], classes).to(dev) for p in aux_points}
    params = [q for h in heads.values() for q in h.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    steps, total = 0, epochs * len(labels)
    with torch.enable_grad():
        for h in heads.values():
            h.train()
        for _ in range(epochs):
            for i, y in enumerate(labels):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(steps / total * torch.pi)).item())
                loss = sum(F.cross_entropy(heads[p](feats[p][i]), y) for p in aux_points)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
    for h in heads.values():
        h.eval().requires_grad_(False)
    return heads


def greedy_order(split: Split, head: nn.Module | None, data: list, *, mse_weight: float = 1.0,
                 softmax_weight: float = 1.0, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                 sub_passes: int = 1, stop_at: int | None = None) -> list[int]:
    """DCP's greedy selection for one conv: ``data`` is a list of ``(live tensors, target conv output, labels)``
    per batch. Returns the input channels in the order they join (``stop_at`` of them; default all)."""
    w0 = split.conv.weight.detach()
    C = w0.shape[1]
    wp = torch.zeros_like(w0, requires_grad=True)
    chosen = torch.zeros(C, dtype=torch.bool, device=w0.device)
    order: list[int] = []

    def loss_of(live, target, y):
        end, out = split.suffix(*(t.clone() for t in live), wp)  # clones: an in-place op must not touch the cache
        logits = head(end) if head is not None else end
        return mse_weight * F.mse_loss(out, target) + softmax_weight * F.cross_entropy(logits, y)

    for _ in range(C if stop_at is None else stop_at):
        wp.grad = None
        for live, target, y in data:                        # gradient of the joint loss, summed over the batches
            loss_of(live, target, y).backward()
        norm = wp.grad.detach().pow(2).sum((2, 3)).sqrt().sum(0)
        norm = norm.masked_fill(chosen, -1.0)
        j = int(norm.argmax())
        chosen[j] = True
        order.append(j)
        with torch.no_grad():
            wp[:, j] = w0[:, j]                               # warm start from the trained kernels
        if len(order) == C:
            break
        opt = torch.optim.SGD([wp], lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
        keep = chosen.to(wp.dtype).view(1, -1, 1, 1)
        for _ in range(sub_passes):                         # Eq. 16: refit the kept kernels, the others held at 0
            for live, target, y in data:
                opt.zero_grad()
                loss_of(live, target, y).backward()
                wp.grad.mul_(keep)
                opt.step()
        wp.grad = None
    return order


@register("dcp")
@torch.enable_grad()
def dcp(model, layers, batches=None, *, n_batches: int | None = None, aux_points: list[str] | None = None,
        head_epochs: int = 20, head_lr: float = 0.1, sub_passes: int = 1, mse_weight: float = 1.0,
        softmax_weight: float = 1.0, lr: float = 0.01, seed: int = 0):
    """DCP's greedy channel selection (Zhuang et al. 2018) as a filter score: filter j of each layer scores
    C - its rank in the greedy order of the conv that reads the layer (the first chosen scores C). ``aux_points``:
    modules read by auxiliary heads (default ``default_aux_points``: after all stages but the last); heads trained
    on the first ``n_batches`` batches, which the selection uses too. Layers must be internal."""
    if batches is None:
        raise ValueError("dcp needs data: pass batches, e.g. reprolib.data.batches(x, y, 128)")
    fresh = replayable(batches, "dcp")
    cons = consumers(model, layers)
    dev = _device(model)
    data = [(x.to(dev), y.to(dev)) for x, y in itertools.islice(fresh(), n_batches)]
    if not data:
        raise ValueError("dcp: batches yielded no data")
    points = default_aux_points(model) if aux_points is None else list(aux_points)
    was = model.training
    flags = [(q, q.requires_grad) for q in model.parameters()]
    model.eval()
    try:
        for q, _ in flags:                                  # gradients flow to the kernels being selected only
            q.requires_grad_(False)
        with torch.no_grad():
            classes = model(data[0][0][:1]).shape[1]
        heads = train_heads(model, points, data, classes=classes, epochs=head_epochs, lr=head_lr, seed=seed)
        graph_pos = {n.target: i for i, n in enumerate(fx.symbolic_trace(model).graph.nodes) if n.op == "call_module"}
        out = {}
        for name, conv in tqdm(cons.items(), desc="dcp", leave=False):
            end = next((p for p in points if graph_pos[p] > graph_pos[conv]), None)
            split = Split(model, conv, end)
            cached = []
            with torch.no_grad():
                for x, y in data:
                    live = split.prefix(x)
                    live = live if isinstance(live, tuple) else (live,)
                    target = F.conv2d(live[0], split.conv.weight, split.conv.bias, split.conv.stride,
                                      split.conv.padding, split.conv.dilation, split.conv.groups)
                    cached.append((live, target, y))
            order = greedy_order(split, heads.get(end), cached, mse_weight=mse_weight, softmax_weight=softmax_weight,
                                 lr=lr, sub_passes=sub_passes)
            C = len(order)
            scores = torch.zeros(C)
            scores[torch.tensor(order)] = torch.arange(C, 0, -1, dtype=torch.float32)
            out[name] = scores
    finally:
        model.train(was)
        for q, flag in flags:
            q.requires_grad_(flag)
    return out


dcp.input_channels = True  # scores a layer's filters by its consumer's input channels (channels.py)
