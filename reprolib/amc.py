"""AutoML for model compression (AMC; He et al., ECCV 2018; "ADC" in the summary, Section 7.2): a DDPG agent
chooses a pruning rate for each layer in turn; the episode's network is evaluated *without* fine-tuning and
its error is the reward; a FLOPs budget is enforced by limiting the actions.

Layers. On a ResNet the agent prunes the first conv of each residual block (``conv1``), whose filters feed
only the block's ``conv2``: removing one removes a filter of ``conv1`` and an input channel of ``conv2``, so a
unit's true FLOPs are exactly linear in its kept filters (``Unit.coef`` per filter). Ours: the residual stream
is left alone (pruning it needs every block of a stage to agree on its channels), and the filters that go
within a layer are those of lowest L1 norm (Li et al.), without least-squares reconstruction.

State (the paper's 11 features of layer t): (t, n, c, h, w, stride, k, FLOPs[t], reduced, rest, a_{t-1}):
index, output filters, input channels, input map height and width, stride, kernel size, the FLOPs the unit
controls, the FLOPs removed by the previous actions, the FLOPs of the following units, the previous action.
Scaling to [0, 1] (ours; the paper only says that features are scaled): the static ones (t to FLOPs[t])
min-max over the units (0 where all units agree), ``reduced`` and ``rest`` divided by the dense network's
true FLOPs.

Action: a_t in [0, a_max], the share of the unit's filters pruned (``round(a_t * C)`` filters; a_max < 1,
0.8 in the study, is ours: every unit keeps a fifth of its filters at least). The action
limit (the paper's Algorithm for resource-constrained compression), on filter counts so that it is exact:
a unit prunes at least what the FLOPs target still needs once every later unit prunes its most, so after the
last unit the network's true FLOPs are at or below ``(1 - target)`` of the dense network's.

Reward: -error of the pruned, not fine-tuned network (the paper's R_err), on held-out data.

Agent (``DDPG``): actor and critic with two hidden layers of 300 units, Adam at 1e-4 / 1e-3, replay of
2,000 transitions, batches of 64; the first ``warmup`` episodes act at random (as the authors' public code),
then the actor's action plus truncated normal noise whose sigma (in units of the action range) starts at 0.5
and decays exponentially after each episode (ours: by 0.99 an episode); every step of an episode is stored
with the episode's reward minus a moving average of past rewards (the paper's baseline). Ours: the critic
regresses that baselined reward directly (each step's target is the episode's return: no bootstrapping, hence
no target networks), the moving average has weight 0.95 on the past, and the networks are updated once per
stored step after each episode.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .counting import count

FEATURES = ("t", "n", "c", "h", "w", "stride", "k", "flops", "reduced", "rest", "a_prev")


@dataclass(frozen=True)
class Unit:
    """One prunable layer: ``name`` (its conv), ``consumer`` (the conv that reads its filters), its shape
    (``n`` filters, ``c`` input channels, ``h`` x ``w`` input map, ``stride``, kernel ``k``) and ``coef``: the
    true FLOPs of the network per kept filter (the filter's own MACs and the consumer's MACs on it)."""
    name: str
    consumer: str
    n: int
    c: int
    h: int
    w: int
    stride: int
    k: int
    coef: int

    @property
    def flops(self) -> int:
        return self.coef * self.n


def units(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[Unit]:
    """The ``conv1`` of every residual block (a module with conv1, conv2 and a shortcut), in module order."""
    blocks = [(n, m) for n, m in model.named_modules() if all(hasattr(m, a) for a in ("conv1", "conv2", "shortcut"))]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks (conv1, conv2, shortcut): AMC here prunes "
                         "the first conv of each block")
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, (tuple(i[0].shape), tuple(o.shape))))
             for _, b in blocks for m in (b.conv1, b.conv2)]
    was = model.training
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model.eval()(torch.zeros(tuple(input_size), device=p.device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    out = []
    for name, b in blocks:
        c1, c2 = b.conv1, b.conv2
        if c1.groups != 1 or c2.groups != 1 or c2.in_channels != c1.out_channels:
            raise ValueError(f"block {name!r}: conv1 must feed conv2 directly, without groups")
        (i1, o1), (_, o2) = shapes[c1], shapes[c2]
        per_filter = c1.in_channels * c1.kernel_size[0] * c1.kernel_size[1] * o1[2] * o1[3] + (c1.bias is not None) * o1[2] * o1[3]
        per_input = c2.out_channels * c2.kernel_size[0] * c2.kernel_size[1] * o2[2] * o2[3]
        out.append(Unit(f"{name}.conv1", f"{name}.conv2", c1.out_channels, c1.in_channels, i1[2], i1[3],
                        c1.stride[0], c1.kernel_size[0], per_filter + per_input))
    return out


def static_features(us: Sequence[Unit]) -> np.ndarray:
    """[units, 8]: t, n, c, h, w, stride, k, FLOPs[t], each min-max scaled over the units (0 if constant)."""
    raw = np.array([[i, u.n, u.c, u.h, u.w, u.stride, u.k, u.flops] for i, u in enumerate(us)], dtype=np.float64)
    lo, hi = raw.min(0), raw.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (raw - lo) / span, 0.0)


class Environment:
    """One pass over the units; ``dense_flops``: the whole network's true FLOPs; ``target``: the share of them
    to remove (0 = no constraint); ``a_max``: the largest share of a unit's filters an action may prune."""

    def __init__(self, us: Sequence[Unit], dense_flops: int, target: float, a_max: float = 0.8):
        if not us:
            raise ValueError("no units to prune")
        if not 0 <= target < 1:
            raise ValueError(f"target FLOPs reduction must be in [0, 1), got {target}")
        if not 0 < a_max < 1:
            raise ValueError(f"a_max must be in (0, 1): every unit keeps a filter; got {a_max}")
        self.units, self.dense, self.target, self.a_max = list(us), int(dense_flops), target, a_max
        self.need = math.ceil(target * self.dense)  # MACs that must go
        self.r_max = [min(u.n - 1, math.floor(a_max * u.n)) for u in self.units]
        self.most = [u.coef * r for u, r in zip(self.units, self.r_max)]
        reachable = sum(self.most)
        if reachable < self.need:
            raise ValueError(f"pruning at most {a_max:.0%} of each unit's filters removes {reachable / self.dense:.1%} "
                             f"of the FLOPs, below the target {target:.1%}")
        self.static = static_features(self.units)
        self.reset()

    def reset(self) -> np.ndarray:
        self.t, self.reduced, self.a_prev, self.removed = 0, 0, 0.0, []
        return self.state()

    def state(self) -> np.ndarray:
        rest = sum(u.flops for u in self.units[self.t + 1:])
        return np.concatenate([self.static[self.t], [self.reduced / self.dense, rest / self.dense, self.a_prev]])

    def limit(self, action: float) -> int:
        """Filters removed from the current unit for ``action`` (a share), within [the duty, r_max]."""
        u = self.units[self.t]
        later = sum(self.most[self.t + 1:])
        duty = self.need - self.reduced - later
        r_min = max(0, -(-duty // u.coef))  # ceil for integers
        r = math.floor(float(np.clip(action, 0.0, self.a_max)) * u.n + 0.5)
        return int(min(max(r, r_min), self.r_max[self.t]))

    def step(self, action: float) -> tuple[np.ndarray | None, float, bool]:
        """Apply ``action`` to the current unit: (next state or None, the action taken (share pruned), done)."""
        if self.t >= len(self.units):
            raise RuntimeError("the episode is over: call reset()")
        r = self.limit(action)
        u = self.units[self.t]
        self.removed.append(r)
        self.reduced += u.coef * r
        self.a_prev = r / u.n
        self.t += 1
        done = self.t == len(self.units)
        return (None if done else self.state()), self.a_prev, done

    def kept(self) -> dict[str, int]:
        return {u.name: u.n - r for u, r in zip(self.units, self.removed)}

    def flops(self) -> int:
        """True FLOPs of the network pruned by this episode's actions so far."""
        return self.dense - self.reduced


def masks_for(model: nn.Module, scores: dict, kept: dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep-masks of the units: each keeps its ``kept[name]`` highest-scored filters (ties: the lower index)."""
    out = {}
    for name, k in kept.items():
        s = torch.as_tensor(scores[name]).double().cpu()
        n = model.get_submodule(name).out_channels
        if len(s) != n or not 1 <= k <= n:
            raise ValueError(f"{name}: {len(s)} scores, {n} filters, {k} to keep")
        order = torch.sort(-s, stable=True).indices
        keep = torch.zeros(n, dtype=torch.bool)
        keep[order[:k]] = True
        out[name] = keep
    return out


class Masked:
    """Fast evaluation of unit masks on one network without copying it per episode: a pruned filter of a
    unit's conv is silenced by zeroing the weight and bias of the BatchNorm after it (the conv's output is then
    exactly 0 after BN and ReLU, what ``surgery.shrink`` removes). ``with masked(masks): ...``."""

    def __init__(self, model: nn.Module, bn_of: Callable[[str], str] = lambda name: name.replace("conv1", "bn1")):
        self.model, self.bn_of = model, bn_of

    def __call__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        return self

    def __enter__(self):
        self.saved = {}
        with torch.no_grad():
            for name, keep in self.masks.items():
                bn = self.model.get_submodule(self.bn_of(name))
                self.saved[name] = (bn.weight.detach().clone(), bn.bias.detach().clone())
                keep = keep.to(bn.weight.device)
                bn.weight[~keep] = 0
                bn.bias[~keep] = 0
        return self.model

    def __exit__(self, *exc):
        with torch.no_grad():
            for name, (w, b) in self.saved.items():
                bn = self.model.get_submodule(self.bn_of(name))
                bn.weight.copy_(w)
                bn.bias.copy_(b)
        return False


# --------------------------------------------------------------------------- the agent

def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class DDPG:
    """Deep deterministic policy gradient (Lillicrap et al.) with the AMC paper's settings (module docstring).
    Actions are shares in [0, a_max]; the actor outputs a sigmoid in [0, 1] scaled by a_max."""

    def __init__(self, state_dim: int = len(FEATURES), a_max: float = 0.8, hidden: int = 300, lr_actor: float = 1e-4,
                 lr_critic: float = 1e-3, buffer: int = 2000, batch: int = 64, sigma: float = 0.5,
                 sigma_decay: float = 0.99, baseline_decay: float = 0.95, seed: int = 0):
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.a_max, self.batch, self.capacity = a_max, batch, buffer
        self.sigma, self.sigma_decay, self.baseline_decay = sigma, sigma_decay, baseline_decay
        self.actor, self.critic = _mlp(state_dim, hidden, 1), _mlp(state_dim + 1, hidden, 1)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.memory: list[tuple[np.ndarray, float, float]] = []
        self.baseline: float | None = None

    def act(self, state: np.ndarray, explore: bool = True) -> float:
        with torch.no_grad():
            mu = float(torch.sigmoid(self.actor(torch.as_tensor(state, dtype=torch.float32)))) * self.a_max
        if not explore:
            return mu
        for _ in range(100):  # truncated normal on [0, a_max] by rejection
            a = self.rng.normal(mu, self.sigma * self.a_max)
            if 0 <= a <= self.a_max:
                return float(a)
        return float(np.clip(a, 0, self.a_max))

    def random_action(self) -> float:
        return float(self.rng.uniform(0, self.a_max))

    def remember(self, states: list[np.ndarray], actions: list[float], reward: float) -> None:
        """Store an episode, each step with the episode's reward minus the moving-average baseline."""
        self.baseline = reward if self.baseline is None else \
            self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        for s, a in zip(states, actions):
            self.memory.append((s, a / self.a_max, reward - self.baseline))
        del self.memory[:-self.capacity]

    def update(self, steps: int) -> None:
        if len(self.memory) < self.batch:
            return
        for _ in range(steps):
            idx = self.rng.choice(len(self.memory), self.batch, replace=False)
            s = torch.tensor(np.array([self.memory[i][0] for i in idx]), dtype=torch.float32)
            a = torch.tensor([[self.memory[i][1]] for i in idx], dtype=torch.float32)
            r = torch.tensor([[self.memory[i][2]] for i in idx], dtype=torch.float32)
            q = self.critic(torch.cat([s, a], 1))
            loss_c = nn.functional.mse_loss(q, r)
            self.opt_c.zero_grad()
            loss_c.backward()
            self.opt_c.step()
            loss_a = -self.critic(torch.cat([s, torch.sigmoid(self.actor(s))], 1)).mean()
            self.opt_a.zero_grad()
            loss_a.backward()
            self.opt_a.step()


def search(env: Environment, reward: Callable[[dict[str, int]], float], episodes: int, warmup: int,
           seed: int = 0, agent: DDPG | None = None, desc: str = "AMC search") -> dict:
    """Run ``episodes`` episodes (the first ``warmup`` at random); ``reward(kept)`` scores one pruned network
    (``kept``: filters kept per unit). Returns the best episode (``kept``, ``actions``, ``reward``, ``flops``),
    the greedy policy of the final actor (``greedy``: its kept filters and reward) and every episode's
    (reward, FLOPs, actions)."""
    if episodes < 1 or not 0 <= warmup <= episodes:
        raise ValueError(f"need episodes >= 1 and 0 <= warmup <= episodes, got {episodes}, {warmup}")
    agent = agent or DDPG(a_max=env.a_max, seed=seed)
    history, best = [], None
    for ep in tqdm(range(episodes), desc=desc, leave=False):
        state, states, actions, done = env.reset(), [], [], False
        while not done:
            a = agent.random_action() if ep < warmup else agent.act(state)
            states.append(state)
            state, taken, done = env.step(a)
            actions.append(taken)
        r = float(reward(env.kept()))
        history.append({"reward": r, "flops": env.flops(), "actions": actions})
        if best is None or r > best["reward"]:
            best = {"reward": r, "flops": env.flops(), "actions": actions, "kept": env.kept(), "episode": ep}
        agent.remember(states, actions, r)
        if ep >= warmup:
            agent.sigma *= agent.sigma_decay
        if ep + 1 >= warmup:
            agent.update(len(states))
    state, done = env.reset(), False
    while not done:
        state, _, done = env.step(agent.act(state, explore=False))
    greedy = {"kept": env.kept(), "flops": env.flops(), "reward": float(reward(env.kept()))}
    return {"best": best, "greedy": greedy, "history": history}


def uniform_kept(env: Environment) -> dict[str, int]:
    """The smallest single share pruned from every unit that meets the FLOPs target (the same-space control):
    the candidates are the shares k/C of every unit width; the action limit then adds nothing."""
    widths = sorted({u.n for u in env.units})
    for a in sorted({k / c for c in widths for k in range(c)}):
        kept = {u.name: u.n - min(env.r_max[i], math.floor(a * u.n + 0.5)) for i, u in enumerate(env.units)}
        removed = sum(u.coef * (u.n - kept[u.name]) for u in env.units)
        if removed >= env.need:
            return kept
    raise ValueError(f"no uniform share up to a_max = {env.a_max} reaches the target {env.target}")


def dense_flops(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    return count(model, input_size)["flops"]
