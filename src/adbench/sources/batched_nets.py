"""K independent networks held as stacked weights, evaluated with one batched matmul per layer."""

import math

import numpy as np
import torch
from torch import nn


class RunningMeanStd:
    """Per-learner running mean and variance (parallel merge of batch moments), shape (K, dim).

    numpy, float64: it is updated every environment step on tiny arrays, where torch's per-op
    overhead would dominate.
    """

    def __init__(self, num: int, dim: int):
        self.mean = np.zeros((num, dim))
        self.var = np.ones((num, dim))
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:  # x: (K, N, dim)
        b_mean, b_var, b_count = x.mean(1), x.var(1), x.shape[1]
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var, self.count = m2 / total, total


class _Tanh(torch.autograd.Function):
    """tanh with numpy's kernel forward: this torch build's CPU tanh runs about 7x slower than
    numpy's (355 vs 48 us on 131k floats, one thread), and it is the PPO update's largest
    element-wise cost. The backward is tanh's own, 1 - y^2."""

    @staticmethod
    def forward(ctx, x):
        y = torch.from_numpy(np.tanh(x.detach().contiguous().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return _Tanh.apply(x) if x.device.type == "cpu" and x.dtype == torch.float32 else torch.tanh(x)


class BatchedMLP(nn.Module):
    """K separate tanh MLPs; input (K, N, in) -> (K, N, out). Orthogonal init as in CleanRL's PPO.

    The output layer is stored with its columns zero-padded to a multiple of OUT_PAD and the
    output sliced: on this CPU's MKL a batched 64 x 6 (or 64 x 1) GEMM and its backward take about
    twice as long as a 64 x 16 one. The padding never reaches a loss, so its gradient is zero and
    Adam leaves it at zero: the function and the updates are those of the unpadded network.
    """

    OUT_PAD = 16

    def __init__(self, num: int, sizes: list, out_gain: float, generator: torch.Generator):
        super().__init__()
        self.out_dim = sizes[-1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            gain = out_gain if last else math.sqrt(2)
            width = -(-n_out // self.OUT_PAD) * self.OUT_PAD if last else n_out
            w = torch.zeros(num, n_in, width)
            for k in range(num):  # each learner gets its own orthogonal draw
                q = torch.empty(n_out, n_in)
                nn.init.orthogonal_(q, gain=gain, generator=generator)
                w[k, :, :n_out] = q.T
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num, 1, width)))

    def forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """The same function in numpy, without autograd: for acting, one env step at a time, where
        torch's per-op overhead (tens of microseconds) would cost more than the arithmetic."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = np.matmul(x, w.detach().numpy()) + b.detach().numpy()
            if i < last:
                x = np.tanh(x)
        return x[..., : self.out_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = tanh(x)
        return x[..., : self.out_dim]


def clip_grad_norm_per_learner(params: list, max_norm: float) -> torch.Tensor:
    """Clip each learner's gradient to max_norm on its own: a global norm would couple the learners."""
    grads = [p.grad for p in params if p.grad is not None]
    num = grads[0].shape[0]
    norms = torch.sqrt(sum((g.reshape(num, -1) ** 2).sum(1) for g in grads))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(num, *([1] * (g.dim() - 1))))
    return norms
