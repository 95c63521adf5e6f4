"""The compiled training step computes what PyTorch's autograd and our optimizers compute.

`make venv` builds the kernels (trainer/kernels), so these tests import them outright: a
development tree without them fails here rather than skipping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mnist_trainer_kernels as kernels
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from mnist_trainer import compiled
from mnist_trainer.cli import EXIT_USAGE, main
from mnist_trainer.compiled import CompiledStep, KernelsUnavailableError, parameters
from mnist_trainer.config import Hyperparameters
from mnist_trainer.data import Split
from mnist_trainer.model import LeNet
from mnist_trainer.train import EpochResult, make_optimizer, train, train_step
from test_trainer import GOOD_POINT, records, trainer

CPU = torch.device("cpu")


def lenet(dropout: float = 0.0, seed: int = 3) -> LeNet:
    torch.manual_seed(seed)
    return LeNet(dropout).to(memory_format=torch.channels_last)


def batch(size: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (size,), generator=generator)


def close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    """Within `tolerance` of the reference tensor's largest magnitude, element by element."""
    scale = float(reference.abs().max()) or 1.0
    return float((ours - reference).abs().max()) <= tolerance * scale


def test_the_kernels_are_built_for_this_cpu() -> None:
    assert compiled.instructions() in {"avx512", "avx2", "baseline"}
    assert compiled.use_compiled("auto", CPU)
    assert compiled.describe(True) == f"compiled-{kernels.instructions()}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("size", [1, 7, 16, 64])
def test_loss_and_every_gradient_match_autograd(size: int, dropout: float, threads: int) -> None:
    model = lenet(dropout)
    images, labels = batch(size)
    torch.manual_seed(11)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()  # type: ignore[no-untyped-call]
    params = parameters(model)
    grads = [torch.empty_like(p) for p in params]
    torch.manual_seed(11)  # the same dropout draw as the eager forward just made
    mask = CompiledStep(model, make_optimizer(model, Hyperparameters()), threads).dropout_mask(size)
    ours = kernels.forward_backward(images, labels, params, grads, mask, threads)
    assert ours == pytest.approx(loss.item(), rel=1e-5)
    for param, grad in zip(params, grads, strict=True):
        assert param.grad is not None
        assert close(grad, param.grad, 1e-5), f"{tuple(param.shape)}"
    assert grads[2].is_contiguous(memory_format=torch.channels_last)


def test_a_dropout_draw_is_the_eager_forwards_draw() -> None:
    """Same seed, same mask: the compiled path keeps a seeded trial's random stream."""
    model = lenet(0.5)
    step = CompiledStep(model, make_optimizer(model, Hyperparameters()), 1)
    torch.manual_seed(7)
    eager = F.dropout(torch.ones(16, 500), 0.5, training=True)
    torch.manual_seed(7)
    assert torch.equal(step.dropout_mask(16), eager)
    model.eval()
    assert step.dropout_mask(16) is None


OPTIMIZERS = [
    Hyperparameters(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
    Hyperparameters(optimizer="sgd", learning_rate=0.05, momentum=0.0, weight_decay=0.0),
    Hyperparameters(optimizer="adam", learning_rate=1e-3, weight_decay=1e-3),
    Hyperparameters(optimizer="adamw", learning_rate=1e-3, weight_decay=1e-2),
]


@torch.no_grad()
def updates_agree(ours: LeNet, eager: LeNet, start: LeNet, adam: bool) -> list[str]:
    """Names of the parameters whose updates differ beyond float32 rounding.

    Each parameter's movement from `start` is compared, scaled by its largest movement.
    Adam divides by the root of the squared gradients, so where a gradient is about 0 a
    difference in the last bits can move that element by up to the learning rate: there, a
    few elements in 10,000 may differ by up to 5% of the largest movement.
    """
    names = ("conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b")
    wrong = []
    for name, o, e, s in zip(
        names, parameters(ours), parameters(eager), parameters(start), strict=True
    ):
        moved = float((e - s).abs().max())
        gap = (o - e).abs() / moved
        if adam:
            ok = float((gap > 1e-3).float().mean()) <= 1e-4 and float(gap.max()) <= 5e-2
        else:
            ok = float(gap.max()) <= 1e-4
        if not ok:
            wrong.append(f"{name}: {float(gap.max()):.1e}")
    return wrong


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("hp", OPTIMIZERS, ids=lambda hp: f"{hp.optimizer}-m{hp.momentum}")
def test_several_optimizer_steps_match_the_eager_path(hp: Hyperparameters, dropout: float) -> None:
    eager_model, our_model = lenet(dropout), lenet(dropout)
    eager_opt, our_opt = make_optimizer(eager_model, hp), make_optimizer(our_model, hp)
    step = CompiledStep(our_model, our_opt, 2)
    first_weight = parameters(our_model)[0]
    for number, size in enumerate([16, 16, 9, 1, 16]):
        images, labels = batch(size, seed=number)
        torch.manual_seed(number)
        eager_loss = train_step(eager_model, eager_opt, images, labels)
        torch.manual_seed(number)
        our_loss = step(images, labels)
        assert float(our_loss) == pytest.approx(float(eager_loss), rel=1e-4)
    assert updates_agree(our_model, eager_model, lenet(dropout), hp.optimizer != "sgd") == []
    assert parameters(our_model)[0] is first_weight  # updated in place, not replaced


def test_an_epoch_with_a_partial_last_batch_matches_the_eager_trainer() -> None:
    """train() itself: same initialisation, batch order and updates, 100 images in 16s."""
    images, labels = batch(100, seed=9)
    split = Split(images, labels)
    hp = Hyperparameters(learning_rate=0.05, momentum=0.9, batch_size=16, dropout=0.2)
    seen: dict[bool, EpochResult] = {}
    models: dict[bool, Any] = {}
    for flag in (False, True):
        models[flag] = train(
            hp, split, split, seed=4, on_epoch=lambda r, f=flag: seen.__setitem__(f, r),
            compiled=flag,
        )  # fmt: skip
    assert seen[True].train_loss == pytest.approx(seen[False].train_loss, rel=1e-4)
    assert seen[True].validation.accuracy == seen[False].validation.accuracy
    start = lenet(0.2, seed=4)
    assert updates_agree(models[True], models[False], start, adam=False) == []


def test_bad_input_is_refused_with_the_field_named() -> None:
    model = lenet()
    params = parameters(model)
    grads = [torch.empty_like(p) for p in params]
    images, labels = batch(4)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 10\)"):
        kernels.forward_backward(images, labels + 10, params, grads, None, 1)
    with pytest.raises(RuntimeError, match=r"images must be \(batch, 1, 28, 28\)"):
        kernels.forward_backward(images[:, :, :27], labels, params, grads, None, 1)
    with pytest.raises(RuntimeError, match="expected the LeNet's 8 parameters"):
        kernels.forward_backward(images, labels, params[:7], grads, None, 1)


def test_compiled_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not compiled.use_compiled("eager", CPU)
    with pytest.raises(KernelsUnavailableError, match="run on the CPU only"):
        compiled.use_compiled("compiled", torch.device("cuda"))
    assert not compiled.use_compiled("auto", torch.device("cuda"))
    monkeypatch.setattr(compiled, "_KERNELS", None)
    with pytest.raises(KernelsUnavailableError, match="not built; build them with `pip install"):
        compiled.use_compiled("compiled", CPU)
    assert not compiled.use_compiled("auto", CPU)
    assert compiled.describe(False) == "eager"


@pytest.mark.slow
def test_a_full_trial_is_as_accurate_as_the_eager_trainer(mnist_root: Path, tmp_path: Path) -> None:
    accuracy = {}
    for kernels_flag, named in (("auto", f"compiled-{kernels.instructions()}"), ("eager", "eager")):
        metrics = tmp_path / f"{kernels_flag}.json"
        result = trainer(
            *GOOD_POINT,
            f"--kernels={kernels_flag}",
            f"--data-dir={mnist_root}",
            f"--metrics-file={metrics}",
        )
        assert result.returncode == 0, result.stderr
        assert f"kernels={named} " in result.stdout
        accuracy[named] = next(float(r["accuracy"]) for r in records(metrics) if "accuracy" in r)
    ours, eager = accuracy.values()
    assert ours >= 0.97
    assert abs(ours - eager) <= 0.005, accuracy


def test_the_trainer_refuses_compiled_kernels_it_does_not_have(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(compiled, "_KERNELS", None)
    code = main(["--kernels=compiled", f"--data-dir={tmp_path}"])
    assert code == EXIT_USAGE
    assert "--kernels=compiled: they are not built; build them with" in capsys.readouterr().err
