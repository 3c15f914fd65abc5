"""The fast MLP trainer: mean cross-entropy training of ``Sequential(Linear, ReLU, ..., Linear)`` without
autograd, bit-identical to PyTorch's own step (:func:`fit_mlp`), and the same steps for many models of one shape
at once (:func:`fit_mlps_sgd`, bit-identical to each model trained alone)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from core.training import dataloader_epoch_order


_nll_loss_forward = torch.ops.aten.nll_loss_forward.default


_nll_loss_backward = torch.ops.aten.nll_loss_backward.grad_input


_log_softmax_backward = torch.ops.aten._log_softmax_backward_data.out


_threshold_backward = torch.ops.aten.threshold_backward.grad_input


def mlp_linears(model: nn.Module, user: str) -> list[nn.Linear]:
    """The Linear layers of ``Sequential(Linear, ReLU, ..., Linear)`` with biases; ``ValueError`` naming ``user``
    for any other model."""
    layers = list(model) if isinstance(model, nn.Sequential) else []
    linears = layers[0::2]
    if not (
        linears
        and len(layers) % 2 == 1
        and all(isinstance(m, nn.Linear) and m.bias is not None for m in linears)
        and all(isinstance(m, nn.ReLU) for m in layers[1::2])
    ):
        raise ValueError(f"{user} needs Sequential(Linear, ReLU, ..., Linear) with biases")
    return linears


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
        self._model_params = [p for m in mlp_linears(model, type(self).__name__) for p in (m.weight, m.bias)]
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


def nll_mean(target_log_probs: torch.Tensor) -> torch.Tensor:
    """``nll_loss(reduction="mean")`` from the log-probabilities of the targets (last dim: the batch), summed in
    the order of ATen's CPU kernel (cascaded partial sums, ``LossNLL.cpp``), so each value is bit-identical to
    the kernel's for the same batch."""
    batch = target_log_probs.shape[-1]
    levels = 8
    power = max(4, (batch - 1).bit_length() // levels if batch > 2 else 0)
    mask = (1 << power) - 1
    sums = [target_log_probs.new_zeros(target_log_probs.shape[:-1]) for _ in range(levels)]
    for b in range(batch):
        sums[0] = sums[0] - target_log_probs[..., b]
        for j in range(levels - 1):
            if b & (mask << (j * power)):
                break
            sums[j + 1], sums[j] = sums[j + 1] + sums[j], torch.zeros_like(sums[j])
    total = torch.zeros_like(sums[0])
    for partial in sums:
        total = total + partial
    return total / float(batch)


def _stacked(count: int, shape: tuple[int, ...], offset: int, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised ``(count, *shape)`` whose every ``[k]`` is contiguous and starts ``offset`` elements past a
    64-byte boundary, as a tensor at that offset of a fresh allocation does (MKL's GEMM rounds differently for
    differently aligned outputs)."""
    per_line = 64 // like.element_size()
    size = math.prod(shape)
    step = -(-size // per_line) * per_line
    strides = [1]
    for extent in reversed(shape[1:]):
        strides.insert(0, strides[0] * extent)
    return like.new_empty(count * step + per_line).as_strided((count, *shape), (step, *strides), offset % per_line)


def fit_mlps_sgd(models: Sequence[nn.Sequential], inputs: torch.Tensor, labels: torch.Tensor, *, lr: float,
                 epochs: int, batch_size: int, shuffle_seeds: Sequence[int]) -> list[list[float]]:
    """:func:`fit_mlp` with ``optimizer="sgd"`` for several MLPs of one shape at once; each model's parameters and
    epoch losses are bit-identical to its own :func:`fit_mlp` with one thread.

    inputs, labels: one row per model (``(models, n, features)``, ``(models, n)``); shuffle_seeds: one per model.

    Every kernel of :class:`FastMLPTrainer`'s step runs once for all models: on the CPU ``baddbmm`` / ``bmm``
    compute each model's product with the GEMM ``addmm`` / ``mm`` call, into memory aligned as the single
    model's (:func:`_stacked`); elementwise and per-row kernels treat each element alike; the batch losses are
    replayed from the gathered log-probabilities by :func:`nll_mean`.  Where ATen would multiply a batch of
    small matrices with its own loop instead (fewer than 400 products of a layer and batch), or on more than
    one thread (the kernels then split work differently), the models train one by one.  A non-finite epoch
    loss raises ``FloatingPointError`` naming the model and the epoch.
    """
    count, n = labels.shape
    if not (len(models) == len(shuffle_seeds) == count == inputs.shape[0]) or inputs.shape[1] != n:
        raise ValueError(f"fit_mlps_sgd needs one row of inputs, labels and a shuffle seed per model; got "
                         f"{len(models)} models, inputs {tuple(inputs.shape)}, labels {tuple(labels.shape)}, "
                         f"{len(shuffle_seeds)} seeds")
    linears = [mlp_linears(model, "fit_mlps_sgd") for model in models]
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    sizes = sorted({stop - start for start, stop in bounds}, reverse=True)
    if torch.get_num_threads() != 1 or any(size * m.in_features * m.out_features < 400
                                           for size in sizes for m in linears[0]):
        return [fit_mlp(model, inputs[k], labels[k], optimizer="sgd", lr=lr, epochs=epochs, batch_size=batch_size,
                        shuffle_seed=seed) for k, (model, seed) in enumerate(zip(models, shuffle_seeds))]
    like = linears[0][0].weight.detach()
    weights, biases, weight_grads, bias_grads, offset = [], [], [], [], 0  # laid out as FastMLPTrainer's flat vector
    for i, layer in enumerate(linears[0]):
        for values, grads, shape in ((weights, weight_grads, layer.weight.shape),
                                     (biases, bias_grads, layer.bias.shape)):
            values.append(_stacked(count, tuple(shape), offset, like))
            grads.append(_stacked(count, tuple(shape), offset, like))
            offset += math.prod(shape)
        with torch.no_grad():
            for k, layers in enumerate(linears):
                weights[i][k].copy_(layers[i].weight)
                biases[i][k].copy_(layers[i].bias)
    weights_t = [w.transpose(1, 2) for w in weights]
    biases_in = [b[:, None, :] for b in biases]
    widths, last = [b.shape[1] for b in biases], len(weights) - 1
    # per batch size: layer outputs, their gradients (and transposes), log-probabilities and their gradient,
    # the loss gradient's value, and every step's log-probabilities of the targets (for the losses)
    buffers = {}
    for size in sizes:
        outputs = [_stacked(count, (size, w), 0, like) for w in widths]
        grads = [_stacked(count, (size, w), 0, like) for w in widths]
        steps = sum(1 for start, stop in bounds if stop - start == size)
        buffers[size] = (outputs, grads, [g.transpose(1, 2) for g in grads], like.new_empty(count * size, widths[-1]),
                         like.new_empty(count * size, widths[-1]), -(torch.ones((), dtype=like.dtype) / size).item(),
                         like.new_empty(epochs, steps, count, size))
    generators = [torch.Generator().manual_seed(seed) for seed in shuffle_seeds]
    offsets = torch.arange(count)[:, None] * n
    flat_inputs, flat_labels = inputs.reshape(count * n, -1), labels.reshape(count * n)
    shuffled_x, shuffled_y = torch.empty_like(inputs), torch.empty_like(labels)
    params, param_grads = [*weights, *biases], [*weight_grads, *bias_grads]
    for epoch in range(epochs):
        order = torch.stack([dataloader_epoch_order(g, n) for g in generators]).add_(offsets).view(-1)
        torch.index_select(flat_inputs, 0, order, out=shuffled_x.view(count * n, -1))
        torch.index_select(flat_labels, 0, order, out=shuffled_y.view(-1))
        seen = dict.fromkeys(sizes, 0)
        for start, stop in bounds:
            size = stop - start
            x, y = shuffled_x[:, start:stop], shuffled_y[:, start:stop, None]
            outputs, grads, grads_t, log_probs, grad_log_probs, grad_value, picked = buffers[size]
            h = x
            for i, (w_t, b) in enumerate(zip(weights_t, biases_in)):
                torch.baddbmm(b, h, w_t, out=outputs[i])
                if i < last:
                    outputs[i].relu_()
                h = outputs[i]
            scores = outputs[last].reshape(log_probs.shape)  # a copy where the slices have gaps
            torch._log_softmax(scores, 1, False, out=log_probs)
            torch.gather(log_probs.view(count, size, -1), 2, y, out=picked[epoch, seen[size]].unsqueeze(2))
            seen[size] += 1
            grad_log_probs.zero_().view(count, size, -1).scatter_(2, y, grad_value)
            _log_softmax_backward(grad_log_probs, log_probs, 1, log_probs.dtype, out=scores)
            grads[last].copy_(scores.view(count, size, -1))
            for i in range(last, -1, -1):
                torch.sum(grads[i], 1, out=bias_grads[i])
                torch.bmm(grads_t[i], x if i == 0 else outputs[i - 1], out=weight_grads[i])
                if i > 0:
                    torch.bmm(grads[i], weights[i], out=grads[i - 1])
                    _threshold_backward(grads[i - 1], outputs[i - 1], 0, grad_input=grads[i - 1])
            for param, grad in zip(params, param_grads):
                param.add_(grad, alpha=-lr)
    # each batch's mean loss, as .item() gives it, summed per epoch in float64 in batch order as fit_mlp does
    batch_losses = {size: nll_mean(buffers[size][-1]).double() for size in sizes}
    seen = dict.fromkeys(sizes, 0)
    total = torch.zeros(epochs, count, dtype=torch.float64)
    for start, stop in bounds:
        total = total + batch_losses[stop - start][:, seen[stop - start]]
        seen[stop - start] += 1
    losses = total / len(bounds)
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        epoch, index = bad[bad[:, 1].argmin()].tolist()  # the first model that went non-finite, at its first epoch
        raise FloatingPointError(f"train loss became non-finite ({losses[epoch, index].item()}) in epoch {epoch} "
                                 f"of model {index} (sgd, lr={lr}, hidden widths {widths[:-1]})")
    with torch.no_grad():
        for k, layers in enumerate(linears):
            for layer, w, b in zip(layers, weights, biases):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k])
    return losses.T.tolist()
