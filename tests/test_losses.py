"""Baselines against hand-computed values; loading and probing user losses."""

import hashlib
import math
import textwrap

import pytest
import torch

from core.losses import (
    BASELINE_LOSSES,
    LossContractError,
    check_loss,
    instantiate_loss,
    load_loss_source,
    probe_loss,
    tunable_params,
)

LOGITS = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
LABELS = [0, 1]


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_value(name):
    """Each baseline's formula, written out per sample with the math module."""
    per_sample = []
    for row, y in zip(LOGITS, LABELS):
        p = _softmax(row)
        ce = -math.log(p[y])
        if name == "cross_entropy":
            per_sample.append(ce)
        elif name == "generalized_ce":
            per_sample.append((1 - p[y] ** 0.7) / 0.7)
        elif name == "symmetric_ce":
            rce = -sum(p[k] * math.log(1.0 if k == y else 1e-4) for k in range(3))
            per_sample.append(ce + 0.5 * rce)
        elif name == "bootstrap":
            per_sample.append(-sum((0.8 * (k == y) + 0.2 * p[k]) * math.log(p[k]) for k in range(3)))
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("name", sorted(BASELINE_LOSSES))
def test_baselines_match_hand_computed_values(name):
    loss = instantiate_loss(load_loss_source(name))
    value = loss.compute_loss(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS), epoch=0)
    assert value.dim() == 0
    assert value.item() == pytest.approx(_hand_value(name), rel=1e-12)


def test_generalized_ce_clamps_tiny_probabilities():
    loss = BASELINE_LOSSES["generalized_ce"]()
    value = loss.compute_loss(torch.tensor([[0.0, 100.0]], dtype=torch.float64), torch.tensor([0]), 0)
    assert value.item() == pytest.approx((1 - 1e-8**0.7) / 0.7, rel=1e-12)


def test_bootstrap_target_is_detached():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    BASELINE_LOSSES["bootstrap"]().compute_loss(logits, torch.tensor(LABELS), 0).backward()
    probs = torch.softmax(logits.detach(), dim=1)
    target = 0.8 * torch.nn.functional.one_hot(torch.tensor(LABELS), 3) + 0.2 * probs
    assert torch.allclose(logits.grad, (probs - target) / 2)


@pytest.mark.parametrize("name", sorted(BASELINE_LOSSES))
def test_baselines_pass_the_probe(name):
    assert check_loss(name, num_classes=10).kind == "baseline"


def _write(tmp_path, body):
    path = tmp_path / "my_loss.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


GOOD_LOSS = """
    import torch.nn.functional as F

    class RobustLoss:
        def __init__(self):
            self.calls = 0

        def compute_loss(self, logits, labels, epoch):
            self.calls += 1
            return F.cross_entropy(logits, labels) * (1.0 if epoch < 10 else 0.5)
"""


def test_user_file_travels_as_source_text(tmp_path):
    spec = _write(tmp_path, GOOD_LOSS)
    source = check_loss(spec, num_classes=5)
    assert source.kind == "file" and source.spec == spec
    assert source.sha256 == hashlib.sha256((tmp_path / "my_loss.py").read_bytes()).hexdigest()
    (tmp_path / "my_loss.py").unlink()  # a remote node has no copy of the file
    loss = instantiate_loss(source)
    assert loss.compute_loss(torch.zeros(2, 5, requires_grad=True), torch.tensor([0, 1]), 0).item() == pytest.approx(math.log(5))


def test_module_class_spec():
    source = check_loss("core.losses:SoftBootstrap", num_classes=3)
    assert source.kind == "module" and source.source is None


CONTRACT_VIOLATIONS = {
    "syntax_error": (
        """
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch)
                return 0
        """,
        r"syntax error at line 3",
    ),
    "no_class": ("LOSS = 1\n", r"defines no RobustLoss class"),
    "not_a_class": ("def RobustLoss():\n    return 1\n", r"must be a class"),
    "init_needs_arguments": (
        """
        class RobustLoss:
            def __init__(self, q):
                self.q = q
            def compute_loss(self, logits, labels, epoch):
                return logits.sum()
        """,
        r"__init__ must take no arguments.*\(q\)",
    ),
    "init_raises": (
        """
        class RobustLoss:
            def __init__(self):
                raise RuntimeError("bad init")
        """,
        r"__init__ raised RuntimeError: bad init",
    ),
    "import_raises": ("raise ImportError('missing dependency')\n", r"raised while loading: ImportError: missing dependency"),
    "no_compute_loss": ("class RobustLoss:\n    pass\n", r"no compute_loss"),
    "compute_loss_raises": (
        """
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return {}[epoch]
        """,
        r"compute_loss raised KeyError",
    ),
    "fails_after_epoch_0": (
        """
        import torch.nn.functional as F
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                assert epoch == 0, "only epoch 0"
                return F.cross_entropy(logits, labels)
        """,
        r"compute_loss raised AssertionError: only epoch 0 \(epoch 1\)",
    ),
    "returns_float": (
        """
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return 1.0
        """,
        r"returned a float, not a torch.Tensor",
    ),
    "not_scalar": (
        """
        import torch.nn.functional as F
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return F.cross_entropy(logits, labels, reduction="none")
        """,
        r"shape \(16,\), not a scalar",
    ),
    "not_finite": (
        """
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return logits.sum() * float("nan")
        """,
        r"non-finite value nan",
    ),
    "detached": (
        """
        import torch.nn.functional as F
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return F.cross_entropy(logits.detach(), labels)
        """,
        r"no gradient w.r.t. the logits",
    ),
    "gradient_of_something_else": (
        """
        import torch
        class RobustLoss:
            def __init__(self):
                self.w = torch.ones((), requires_grad=True)
            def compute_loss(self, logits, labels, epoch):
                return self.w * 2
        """,
        r"no gradient w.r.t. the logits",
    ),
    "non_finite_gradient": (
        """
        class RobustLoss:
            def compute_loss(self, logits, labels, epoch):
                return (logits - logits).sqrt().sum()
        """,
        r"non-finite gradient",
    ),
}


@pytest.mark.parametrize("case", sorted(CONTRACT_VIOLATIONS))
def test_contract_violations_name_the_rule(tmp_path, case):
    body, message = CONTRACT_VIOLATIONS[case]
    with pytest.raises(LossContractError, match=message):
        check_loss(_write(tmp_path, body), num_classes=4)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("missing/dir/my_loss.py", r"loss file missing"),
        ("not_a_loss", r"unknown loss 'not_a_loss'.*cross_entropy"),
        ("no_such_module_xyz:RobustLoss", r"cannot import 'no_such_module_xyz'"),
        ("core.losses:NoSuchClass", r"has no class 'NoSuchClass'"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(LossContractError, match=message):
        check_loss(spec, num_classes=4)


def test_contract_error_is_a_value_error_and_tampered_source_is_refused(tmp_path):
    assert issubclass(LossContractError, ValueError)
    source = load_loss_source(_write(tmp_path, GOOD_LOSS))
    tampered = type(source)(kind="file", spec=source.spec, source=source.source + "\nX = 1\n", sha256=source.sha256)
    with pytest.raises(LossContractError, match="does not match its sha256"):
        instantiate_loss(tampered)


def test_probe_runs_on_the_requested_device():
    seen = []

    class RecordingLoss:
        def compute_loss(self, logits, labels, epoch):
            seen.append((logits.device.type, labels.device.type, labels.dtype))
            return logits.logsumexp(1).mean()

    probe_loss(RecordingLoss(), num_classes=3, device="cpu")
    assert seen == [("cpu", "cpu", torch.int64)] * 2


def test_the_baselines_hyperparameters_are_the_specs_values():
    assert {name: tunable_params(cls) for name, cls in BASELINE_LOSSES.items()} == {
        "cross_entropy": {}, "generalized_ce": {"q": 0.7}, "symmetric_ce": {"alpha": 1.0, "beta": 0.5},
        "bootstrap": {"beta": 0.8}}


def test_overridden_hyperparameters_change_the_value_and_keep_the_constructor(tmp_path):
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    gce = instantiate_loss(load_loss_source("generalized_ce"), {"q": 0.5})
    p_y = torch.softmax(logits, 1)[[0, 1], labels]
    assert torch.allclose(gce.compute_loss(logits, labels, 0), ((1 - p_y**0.5) / 0.5).mean())
    assert instantiate_loss(load_loss_source("generalized_ce")).q == 0.7, "the class default is untouched"
    user = _write(tmp_path, """
        import torch.nn.functional as F
        class RobustLoss:
            warmup_epochs = 3
            margin = 0.1
            use_floor = False
            name = "not a hyperparameter"
            def compute_loss(self, logits, labels, epoch):
                return F.cross_entropy(logits, labels) * (1 + self.margin)
        """)
    source = load_loss_source(user)
    loss = instantiate_loss(source, {"warmup_epochs": 5.0, "margin": 1, "use_floor": True})
    assert (loss.warmup_epochs, loss.margin, loss.use_floor) == (5, 1.0, True)
    assert type(loss.warmup_epochs) is int and type(loss.margin) is float
    assert tunable_params(type(loss)) == {"warmup_epochs": 3, "margin": 0.1, "use_floor": False}


@pytest.mark.parametrize("params, message", [
    ({"p": 0.5}, "has no hyperparameter 'p'; it has: q"),
    ({"q": "high"}, "hyperparameter q must be float like its default 0.7, got 'high'"),
    ({"q": float("nan")}, "hyperparameter q must be float"),
    ({"q": True}, "hyperparameter q must be float"),
])
def test_a_bad_hyperparameter_names_the_loss_the_name_and_the_value(params, message):
    with pytest.raises(LossContractError, match="generalized_ce") as error:
        instantiate_loss(load_loss_source("generalized_ce"), params)
    assert message in str(error.value)


def test_the_probe_runs_with_the_hyperparameters():
    with pytest.raises(LossContractError, match="non-finite"):
        check_loss("generalized_ce", num_classes=4, params={"q": 0.0})  # (1 - p**0) / 0 = 0 / 0
