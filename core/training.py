"""Training pieces the studies' protocols share: device choice, accuracy, the MLP fitting routine."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from core.models import build_model

_nll_loss_forward = torch.ops.aten.nll_loss_forward.default
_nll_loss_backward = torch.ops.aten.nll_loss_backward.grad_input
_log_softmax_backward = torch.ops.aten._log_softmax_backward_data.out
_threshold_backward = torch.ops.aten.threshold_backward.grad_input


def dataloader_epoch_order(generator: torch.Generator, n: int) -> torch.Tensor:
    """The sample order of one epoch of ``DataLoader(shuffle=True, generator=g)``.

    Drawing from ``generator`` exactly as the DataLoader does lets a loop index
    tensors directly and still see the same batches, without per-sample fetch
    and collate: each epoch's iterator draws one int64 base seed, then
    ``RandomSampler`` draws the order and, on exhaustion, one more
    permutation it slices to nothing.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices kept for training and held out for validation: ``round(n * fraction)`` samples drawn
    uniformly by ``numpy.random.default_rng([seed, 1])`` (a stream of its own, unlike any drawn from ``seed``)."""
    held_out = np.sort(np.random.default_rng([seed, 1]).permutation(n)[:int(round(n * fraction))])
    return np.setdiff1d(np.arange(n), held_out), held_out


def select_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` if usable, with an explicit CUDA index; None means CUDA when available, else CPU.

    Requested CUDA without a GPU falls back to CPU with a warning.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn("CUDA requested but not available; running on CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
    return device


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (0.0 for none), counted exactly."""
    return int((predictions == labels).sum()) / len(labels) if len(labels) else 0.0


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Arg-max class of each input, with the model in eval mode for the call."""
    was_training = model.training
    model.eval()
    try:
        return model(inputs).argmax(dim=1)
    finally:
        model.train(was_training)


class torch_threads:
    """Context manager running its body with ``n`` intra-op threads, then restoring the old count.

    Float reductions (the batch sum in a matmul gradient, for one) depend on
    the thread count, so it is a protocol value: same config, same numbers.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"torch_threads must be >= 1, got {n}")
        self.n = n
        self.previous = torch.get_num_threads()

    def __enter__(self) -> "torch_threads":
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


# per batch size: layer outputs, pre-activation gradients and their transposes, log-probabilities, their gradient
_BatchBuffers = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]


class FastMLPTrainer:
    """Mean cross-entropy training steps for ``Sequential(Linear, ReLU, ..., Linear)``, without autograd.

    Speed only.  Each step calls, in order, the ATen kernels that
    ``F.cross_entropy(model(x), y).backward()`` calls for this model --
    addmm, relu, log_softmax, nll_loss and their backward kernels, ``mm`` for
    the weight and input gradients, ``sum`` for the bias gradients -- then the
    optimizer update of the subclass (:class:`FastMLPAdam`,
    :class:`FastMLPSGD`), but writes into buffers allocated once (no
    allocations, hence no page faults on fresh memory, in the steady state).
    Parameters and gradients live in two flat vectors; ``params`` and
    ``grads`` are per-tensor views of them.  The model itself is only
    updated by :meth:`write_back`.

    With one thread the result is bit-identical to the autograd loop with
    the matching ``torch.optim`` optimizer (``tests/test_adversarial_core.py``
    and ``tests/test_poison_core.py`` check it against ``DataLoader`` loops);
    see the subclasses for the optimizer's own caveats.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = list(model) if isinstance(model, nn.Sequential) else []
        linears = layers[0::2]
        if not (
            linears
            and len(layers) % 2 == 1
            and all(isinstance(m, nn.Linear) and m.bias is not None for m in linears)
            and all(isinstance(m, nn.ReLU) for m in layers[1::2])
        ):
            raise ValueError(f"{type(self).__name__} needs Sequential(Linear, ReLU, ..., Linear) with biases")
        self._model_params = [p for m in linears for p in (m.weight, m.bias)]
        total = sum(p.numel() for p in self._model_params)
        dtype = self._model_params[0].dtype
        self.flat = torch.empty(total, dtype=dtype)
        self.flat_grad = torch.empty(total, dtype=dtype)
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        offset = 0
        for p in self._model_params:
            k = p.numel()
            self.flat[offset : offset + k].copy_(p.detach().reshape(-1))
            self.params.append(self.flat[offset : offset + k].view_as(p))
            self.grads.append(self.flat_grad[offset : offset + k].view_as(p))
            offset += k
        self._weights, self._biases = self.params[0::2], self.params[1::2]
        self._weights_t = [w.t() for w in self._weights]
        self._weight_grads = self.grads[0::2]
        self._bias_grads = [g.view(1, -1) for g in self.grads[1::2]]  # sum(..., keepdim=True) shape
        self._one = torch.ones((), dtype=dtype)
        self._buffers: dict[int, _BatchBuffers] = {}

    def _batch_buffers(self, n: int) -> _BatchBuffers:
        if n not in self._buffers:
            widths = [len(b) for b in self._biases]
            grads = [self.flat.new_empty(n, w) for w in widths]  # loss gradients w.r.t. the pre-activations
            self._buffers[n] = (
                [self.flat.new_empty(n, w) for w in widths],  # layer outputs (after ReLU for hidden layers)
                grads,
                [g.t() for g in grads],
                self.flat.new_empty(n, widths[-1]),  # log-probabilities
                self.flat.new_empty(n, widths[-1]),  # loss gradient w.r.t. the log-probabilities
            )
        return self._buffers[n]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on the batch; returns its mean cross-entropy (before the step).

        No ``torch.no_grad()`` needed or used: every tensor written is a plain
        buffer, so autograd records nothing (the guard cost ~20% of a step).
        ``x`` must not require grad.
        """
        outputs, grads, grads_t, log_probs, grad_log_probs = self._batch_buffers(x.shape[0])
        last = len(self._weights) - 1
        h = x
        for i, (w_t, b) in enumerate(zip(self._weights_t, self._biases)):
            torch.addmm(b, h, w_t, out=outputs[i])  # = F.linear
            if i < last:
                outputs[i].relu_()
            h = outputs[i]
        torch._log_softmax(outputs[last], 1, False, out=log_probs)
        loss, total_weight = _nll_loss_forward(log_probs, y, None, 1, -100)  # mean reduction
        _nll_loss_backward(self._one, log_probs, y, None, 1, -100, total_weight, grad_input=grad_log_probs)
        _log_softmax_backward(grad_log_probs, log_probs, 1, log_probs.dtype, out=grads[last])
        for i in range(last, -1, -1):
            torch.sum(grads[i], (0,), keepdim=True, out=self._bias_grads[i])
            torch.mm(grads_t[i], x if i == 0 else outputs[i - 1], out=self._weight_grads[i])
            if i > 0:
                torch.mm(grads[i], self._weights[i], out=grads[i - 1])
                _threshold_backward(grads[i - 1], outputs[i - 1], 0, grad_input=grads[i - 1])
        self._update()
        return loss.item()

    def _update(self) -> None:
        """Apply the optimizer to ``flat`` / ``params`` from ``flat_grad`` / ``grads``."""
        raise NotImplementedError

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained values into the model's parameters."""
        for param, value in zip(self._model_params, self.params):
            param.copy_(value)


class FastMLPAdam(FastMLPTrainer):
    """:class:`FastMLPTrainer` with ``torch.optim.Adam`` (single-tensor path, no weight decay / amsgrad).

    Calls Adam's lerp / mul / addcmul / sqrt / div / add / addcdiv once on
    the flat vector of all parameters instead of once per tensor.  That
    relies on every parameter tensor starting on a 16-element boundary (two
    AVX2 vectors) so the elementwise kernels vectorise the same elements as
    per tensor; it holds when the hidden widths are multiples of 16.  For
    other widths a few elements may take a scalar path instead, which can
    change their last bit.
    """

    def __init__(self, model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(model)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.denom = torch.empty_like(self.flat)
        self.lr, self.beta1, self.beta2, self.eps = lr, betas[0], betas[1], eps
        self.steps = 0

    def _update(self) -> None:
        self.steps += 1
        step_size = self.lr / (1 - self.beta1**self.steps)
        bias_correction2_sqrt = (1 - self.beta2**self.steps) ** 0.5
        grad = self.flat_grad
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.div_(bias_correction2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, self.denom, value=-step_size)


class FastMLPSGD(FastMLPTrainer):
    """:class:`FastMLPTrainer` with plain ``torch.optim.SGD`` (no momentum, dampening or weight decay).

    ``p.add_(grad, alpha=-lr)`` per parameter tensor, as the optimizer's
    single-tensor path does, so any width is bit-identical.
    """

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__(model)
        self.lr = lr

    def _update(self) -> None:
        for param, grad in zip(self.params, self.grads):
            param.add_(grad, alpha=-self.lr)


OPTIMIZERS = {"sgd": FastMLPSGD, "adam": FastMLPAdam}


def seeded_mlp(in_features: int, hidden_widths: Sequence[int], num_classes: int, seed: int) -> nn.Sequential:
    """The registry's ``mlp``, initialised right after ``torch.manual_seed(seed)`` (the caller's RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", in_features=in_features, hidden_widths=tuple(hidden_widths),
                           num_classes=num_classes)


def fit_mlp(model: nn.Sequential, inputs: torch.Tensor, labels: torch.Tensor, *, optimizer: str, lr: float,
            epochs: int, batch_size: int, shuffle_seed: int, patience: int | None = None,
            min_delta: float = 0.0) -> list[float]:
    """Train ``model`` in place on mean cross-entropy; returns the epoch-mean batch loss of every epoch.

    optimizer:    ``"sgd"`` (plain) or ``"adam"`` (default betas / eps), see :data:`OPTIMIZERS`.
    shuffle_seed: batches follow ``DataLoader(shuffle=True)``'s order for a
                  generator seeded with it (consecutive batches of
                  ``batch_size``, the last one smaller).
    patience:     early stopping: stop once the epoch loss has not fallen more
                  than ``min_delta`` below the best so far for ``patience``
                  consecutive epochs (None: train all ``epochs``).

    Each step is bit-identical to autograd plus the ``torch.optim`` optimizer
    with one thread (see :class:`FastMLPTrainer`).  A non-finite epoch loss
    raises ``FloatingPointError`` naming the epoch.
    """
    trainer = OPTIMIZERS[optimizer](model, lr)
    generator = torch.Generator().manual_seed(shuffle_seed)
    n = len(labels)
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    shuffled_x, shuffled_y = torch.empty_like(inputs), torch.empty_like(labels)
    losses: list[float] = []
    best, stale = math.inf, 0
    for epoch in range(epochs):
        order = dataloader_epoch_order(generator, n)
        torch.index_select(inputs, 0, order, out=shuffled_x)
        torch.index_select(labels, 0, order, out=shuffled_y)
        total = 0.0
        for start, stop in bounds:
            total += trainer.step(shuffled_x[start:stop], shuffled_y[start:stop])
        losses.append(total / len(bounds))
        if not math.isfinite(losses[-1]):
            widths = [len(b) for b in trainer.params[1::2]][:-1]
            raise FloatingPointError(f"train loss became non-finite ({losses[-1]}) in epoch {epoch} "
                                     f"({optimizer}, lr={lr}, hidden widths {widths})")
        if patience is not None:
            if losses[-1] < best - min_delta:
                best, stale = losses[-1], 0
            else:
                stale += 1
                if stale >= patience:
                    break
    trainer.write_back()
    return losses
