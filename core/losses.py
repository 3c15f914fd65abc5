"""Poison-robust losses: the ``RobustLoss`` contract, the four baselines, and loading user losses.

A loss is any class named ``RobustLoss`` with a no-argument ``__init__`` and
``compute_loss(logits, labels, epoch) -> scalar tensor`` (``epoch`` 0-indexed),
called once per minibatch in place of ``nn.CrossEntropyLoss``.  It is named by
a *spec*: a baseline name, a file ``path/to/my_loss.py`` or ``module:Class``.

A loss's hyperparameters are its public class attributes holding numbers or
booleans (``GeneralizedCrossEntropy.q``); ``instantiate_loss(source, params)``
overrides them after the no-argument construction (:func:`tunable_params`).

``load_loss_source(spec)`` turns the spec into a :class:`LossSource` that can
travel to a remote node (a file's text travels with it, no shared filesystem
needed); ``instantiate_loss`` rebuilds the loss there; ``probe_loss`` checks
the contract on a random batch.  Every broken rule raises
:class:`LossContractError` naming the rule.  A loss file is code and runs as
such: load only paths the user gave.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


class LossContractError(ValueError):
    """A loss spec or class breaks the ``RobustLoss`` contract; the message names the rule."""


class RobustLoss:
    """Base of the shipped baselines; user classes only need the same two methods."""

    def __init__(self) -> None:
        pass

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """Scalar loss for one minibatch of ``logits`` (B, K) and int64 ``labels`` (B,)."""
        raise NotImplementedError


class CrossEntropy(RobustLoss):
    """``F.cross_entropy(logits, labels)``."""

    def compute_loss(self, logits, labels, epoch):
        return F.cross_entropy(logits, labels)


class GeneralizedCrossEntropy(RobustLoss):
    """GCE with q = 0.7: ``mean((1 - p_y**q) / q)``, ``p_y`` clamped at 1e-8."""

    q = 0.7

    def compute_loss(self, logits, labels, epoch):
        p_y = F.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1).clamp_min(1e-8)
        return ((1.0 - p_y**self.q) / self.q).mean()


class SymmetricCrossEntropy(RobustLoss):
    """``alpha * CE + beta * RCE`` with alpha 1.0, beta 0.5; RCE clamps softmax at 1e-8 and the one-hot at 1e-4."""

    alpha = 1.0
    beta = 0.5

    def compute_loss(self, logits, labels, epoch):
        ce = F.cross_entropy(logits, labels)
        probs = F.softmax(logits, dim=1).clamp_min(1e-8)
        one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype).clamp_min(1e-4)
        rce = -(probs * torch.log(one_hot)).sum(dim=1).mean()
        return self.alpha * ce + self.beta * rce


class SoftBootstrap(RobustLoss):
    """Soft bootstrapping, beta 0.8: target ``0.8 * onehot + 0.2 * softmax(logits).detach()``."""

    beta = 0.8

    def compute_loss(self, logits, labels, epoch):
        one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        target = self.beta * one_hot + (1.0 - self.beta) * F.softmax(logits, dim=1).detach()
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


BASELINE_LOSSES: dict[str, type[RobustLoss]] = {
    "cross_entropy": CrossEntropy,
    "generalized_ce": GeneralizedCrossEntropy,
    "symmetric_ce": SymmetricCrossEntropy,
    "bootstrap": SoftBootstrap,
}

USER_CLASS_NAME = "RobustLoss"


@dataclass(frozen=True)
class LossSource:
    """Everything needed to rebuild a loss on any node.

    kind:   ``"baseline"``, ``"file"`` or ``"module"``.
    spec:   what the user wrote (baseline name, file path or ``module:Class``).
    source: the file's text (``kind == "file"`` only).
    sha256: SHA-256 of the file's bytes (``kind == "file"`` only).
    """

    kind: str
    spec: str
    source: str | None = None
    sha256: str | None = None


def sha256_text(source: str) -> str:
    """SHA-256 hex digest of ``source`` encoded as UTF-8."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def loss_kind(spec: str) -> str:
    """``"baseline"``, ``"file"`` (ends in .py or contains a path separator) or ``"module"`` (``module:Class``)."""
    if spec in BASELINE_LOSSES:
        return "baseline"
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return "file"
    module_name, _, class_name = spec.partition(":")
    if module_name and class_name.isidentifier():
        return "module"
    raise LossContractError(
        f"unknown loss {spec!r}: expected a baseline ({', '.join(BASELINE_LOSSES)}), "
        "a file path ending in .py, or module:Class"
    )


def load_loss_source(spec: str) -> LossSource:
    """Resolve a loss spec: a baseline name, a ``.py`` file (read now, syntax-checked) or ``module:Class``."""
    kind = loss_kind(spec)
    if kind == "file":
        path = Path(spec)
        if not path.is_file():
            raise LossContractError(f"loss file missing: {spec!r} is not a file")
        raw = path.read_bytes()
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LossContractError(f"loss file {spec!r} is not UTF-8 text: {error}") from None
        _compile(source, spec)
        return LossSource(kind="file", spec=spec, source=source, sha256=sha256_text(source))
    return LossSource(kind=kind, spec=spec)


def _compile(source: str, filename: str) -> types.CodeType:
    try:
        return compile(source, filename, "exec")
    except SyntaxError as error:
        raise LossContractError(f"loss file {filename!r}: syntax error at line {error.lineno}: {error.msg}") from None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _load_file_class(loss_source: LossSource) -> Any:
    if loss_source.source is None:
        raise LossContractError(f"loss {loss_source.spec!r}: kind 'file' needs its source text")
    if loss_source.sha256 is not None and sha256_text(loss_source.source) != loss_source.sha256:
        raise LossContractError(
            f"loss file {loss_source.spec!r}: source does not match its sha256 {loss_source.sha256}"
        )
    code = _compile(loss_source.source, loss_source.spec)
    module_name = f"robustlab_user_loss_{sha256_text(loss_source.source)[:16]}"
    module = types.ModuleType(module_name)
    module.__file__ = loss_source.spec
    sys.modules[module_name] = module  # dataclasses and pickling look their class's module up here
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as error:  # a file that calls sys.exit() at import is refused, not obeyed
        del sys.modules[module_name]
        raise LossContractError(f"loss file {loss_source.spec!r} raised while loading: {_describe(error)}") from error
    if not hasattr(module, USER_CLASS_NAME):
        raise LossContractError(f"loss file {loss_source.spec!r} defines no {USER_CLASS_NAME} class")
    return getattr(module, USER_CLASS_NAME)


def _load_module_class(loss_source: LossSource) -> Any:
    module_name, _, class_name = loss_source.spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        message = f"loss {loss_source.spec!r}: cannot import {module_name!r}: {_describe(error)}"
        raise LossContractError(message) from error
    if not hasattr(module, class_name):
        raise LossContractError(f"loss {loss_source.spec!r}: module {module_name!r} has no class {class_name!r}")
    return getattr(module, class_name)


def tunable_params(loss_class: type) -> dict[str, bool | int | float]:
    """A loss class's hyperparameters: its public class attributes holding a bool, int or float (its own or
    inherited, not those of :class:`RobustLoss`), with their defaults, by name."""
    found: dict[str, bool | int | float] = {}
    for klass in reversed(inspect.getmro(loss_class)):
        if klass in (object, RobustLoss):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (bool, int, float)):
                found[name] = value
            else:
                found.pop(name, None)  # a subclass made it something else (a method, a property)
    return found


def set_loss_params(loss: Any, params: dict[str, Any], spec: str) -> None:
    """Override tunable hyperparameters of a constructed loss (``setattr``), keeping each one's type.

    An unknown name or a value of the wrong type raises :class:`LossContractError` naming the loss, the name and
    the value; an int or float hyperparameter takes any finite number (an int one only whole numbers).
    """
    tunables = tunable_params(type(loss))
    for name, value in params.items():
        if name not in tunables:
            known = ", ".join(sorted(tunables)) or "none"
            raise LossContractError(f"loss {spec!r} has no hyperparameter {name!r}; it has: {known}")
        default = tunables[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) or (
                isinstance(value, float) and value.is_integer())
            value = int(value) if ok else value
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        if not ok:
            raise LossContractError(f"loss {spec!r}: hyperparameter {name} must be "
                                    f"{type(default).__name__} like its default {default!r}, got {value!r}")
        setattr(loss, name, value)


def instantiate_loss(loss_source: LossSource, params: dict[str, Any] | None = None) -> Any:
    """Build a fresh loss object from ``loss_source`` and check its class-level rules; ``params`` override its
    tunable hyperparameters after construction (:func:`set_loss_params`).

    Raises :class:`LossContractError` when the class is missing, its
    ``__init__`` needs arguments or raises, or it has no ``compute_loss``.
    """
    loss = _construct(loss_source)
    if params:
        set_loss_params(loss, params, loss_source.spec)
    return loss


def _construct(loss_source: LossSource) -> Any:
    if loss_source.kind == "baseline":
        return BASELINE_LOSSES[loss_source.spec]()
    if loss_source.kind == "file":
        loss_class = _load_file_class(loss_source)
    elif loss_source.kind == "module":
        loss_class = _load_module_class(loss_source)
    else:
        raise LossContractError(f"loss {loss_source.spec!r}: unknown kind {loss_source.kind!r}")
    name = loss_source.spec
    if not inspect.isclass(loss_class):
        raise LossContractError(f"loss {name!r}: {USER_CLASS_NAME} must be a class, got {type(loss_class).__name__}")
    try:
        inspect.signature(loss_class).bind()
    except TypeError:
        raise LossContractError(
            f"loss {name!r}: __init__ must take no arguments, signature is {inspect.signature(loss_class)}"
        ) from None
    except ValueError:
        pass  # no retrievable signature (C-implemented); the call below decides
    try:
        loss = loss_class()
    except Exception as error:
        raise LossContractError(f"loss {name!r}: __init__ raised {_describe(error)}") from error
    if not callable(getattr(loss, "compute_loss", None)):
        raise LossContractError(f"loss {name!r}: class has no compute_loss(logits, labels, epoch) method")
    return loss


def probe_loss(
    loss: Any, num_classes: int, device: torch.device | str = "cpu", batch_size: int = 16, seed: int = 0
) -> None:
    """Run ``loss.compute_loss`` on a random batch at epochs 0 and 1 and check the contract.

    The result must be a 0-dim tensor, finite, with a finite gradient w.r.t. the
    logits; otherwise :class:`LossContractError` names the broken rule.  Use a
    throwaway instance: a stateful loss sees these two calls.
    """
    generator = torch.Generator().manual_seed(seed)
    for epoch in (0, 1):
        logits = (3.0 * torch.randn(batch_size, num_classes, generator=generator)).to(device).requires_grad_(True)
        labels = torch.randint(num_classes, (batch_size,), generator=generator).to(device)
        try:
            value = loss.compute_loss(logits, labels, epoch)
        except Exception as error:
            raise LossContractError(f"compute_loss raised {_describe(error)} (epoch {epoch})") from error
        if not isinstance(value, torch.Tensor):
            raise LossContractError(f"compute_loss returned a {type(value).__name__}, not a torch.Tensor")
        if value.dim() != 0:
            raise LossContractError(
                f"compute_loss returned a tensor of shape {tuple(value.shape)}, not a scalar (0-dim) tensor"
            )
        if not torch.isfinite(value):
            raise LossContractError(f"compute_loss returned a non-finite value {value.item()} (epoch {epoch})")
        if not value.requires_grad:
            raise LossContractError("compute_loss returned a tensor with no gradient w.r.t. the logits (detached?)")
        (gradient,) = torch.autograd.grad(value, logits, allow_unused=True)
        if gradient is None:
            raise LossContractError("compute_loss returned a tensor with no gradient w.r.t. the logits")
        if not torch.isfinite(gradient).all():
            raise LossContractError("compute_loss has a non-finite gradient w.r.t. the logits")


def check_loss(spec: str, num_classes: int, device: torch.device | str = "cpu",
               timeout_s: float = 30.0, params: dict[str, Any] | None = None) -> LossSource:
    """Load, instantiate (with hyperparameters ``params``) and probe ``spec`` within ``timeout_s``; return its
    :class:`LossSource` for the points.

    Every :class:`LossContractError` names the loss.  The probe runs in a
    daemon thread: a loss that never returns is reported, not waited for.
    """
    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            loss_source = load_loss_source(spec)
            probe_loss(instantiate_loss(loss_source, params), num_classes, device)
            outcome["source"] = loss_source
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=probe, name=f"probe {spec}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise LossContractError(f"loss {spec!r}: the probe did not return within {timeout_s:g} s "
                                "(does compute_loss loop or wait?)")
    error = outcome.get("error")
    if isinstance(error, LossContractError) and repr(spec) not in str(error):
        raise LossContractError(f"loss {spec!r}: {error}") from error
    if error is not None:
        raise error
    return outcome["source"]

