from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812  # the conventional name
from mnist_trainer import train as training
from mnist_trainer.config import Hyperparameters
from mnist_trainer.data import Split
from mnist_trainer.metrics import MetricsReporter, NonFiniteMetricError, katib_timestamp
from mnist_trainer.model import LeNet
from mnist_trainer.train import (
    ONE_THREAD_BELOW_BATCH,
    DivergedError,
    _check_window,
    batches,
    make_optimizer,
    step_threads,
    threads,
)


def test_timestamps_are_whole_seconds() -> None:
    assert katib_timestamp(1700000000.987, 1, None) == 1700000000


def test_a_later_step_gets_a_later_second() -> None:
    assert katib_timestamp(1700000000.2, 2, (1, 1700000000)) == 1700000001
    assert katib_timestamp(1700000005.2, 2, (1, 1700000000)) == 1700000005


def test_metrics_of_one_step_may_share_a_second() -> None:
    assert katib_timestamp(1700000000.9, 1, (1, 1700000000)) == 1700000000


def test_a_long_run_keeps_every_report(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    reporter = MetricsReporter(path)
    for epoch in range(1, 101):
        reporter.report(epoch, {"accuracy": 0.5, "loss": 1.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 200
    assert lines[0]["global_step"] == "1"
    stamps = [rec["timestamp"] for rec in lines]
    assert stamps == sorted(stamps)
    assert all(isinstance(s, int) for s in stamps)


def test_a_reader_following_the_file_from_the_start_sees_every_report(tmp_path: Path) -> None:
    # Katib's collector, with early stopping on, follows the file as `tail -f` does: from
    # the file it opened when it started, so a report must grow that file, not replace it.
    path = tmp_path / "m.json"
    reporter = MetricsReporter(path)
    with path.open() as follower:
        for epoch in (1, 2, 3):
            reporter.report(epoch, {"accuracy": 0.1 * epoch, "loss": 1.0})
        seen = [json.loads(line) for line in follower.read().splitlines()]
    assert [(r["global_step"], r.get("accuracy")) for r in seen[::2]] == [
        ("1", "0.1"), ("2", "0.2"), ("3", "0.30000000000000004"),
    ]  # fmt: skip
    assert len(seen) == 6


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_never_written(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "m.json"
    reporter = MetricsReporter(path)
    reporter.report(1, {"accuracy": 0.9, "loss": 0.3})
    with pytest.raises(NonFiniteMetricError):
        reporter.report(2, {"accuracy": 0.1, "loss": bad})
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["global_step"] == "1" for line in lines)


def test_a_relative_path_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLOUD_ML_HP_METRIC_FILE", raising=False)
    MetricsReporter(Path("metrics.json")).report(1, {"accuracy": 0.25})
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == "0.25"
    assert "CLOUD_ML_HP_METRIC_FILE" not in os.environ


def test_divergence_names_the_first_bad_step() -> None:
    window = torch.tensor([0.5, 0.4, math.inf, math.nan, 0.3])
    with pytest.raises(DivergedError, match=r"loss is inf at step 103 \(epoch 2\)"):
        _check_window(window, 5, 105, 2, Hyperparameters(learning_rate=7.0))
    assert float(_check_window(window, 2, 2, 1, Hyperparameters())) == pytest.approx(0.9)


def test_batches_cover_every_image_once_in_a_seeded_order() -> None:
    def draw(seed: int) -> list[torch.Tensor]:
        return list(batches(10, 4, torch.Generator().manual_seed(seed), torch.device("cpu")))

    first = draw(3)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert torch.equal(torch.cat(first), torch.cat(draw(3)))
    assert not torch.equal(torch.cat(first), torch.cat(draw(4)))


def test_pooling_before_relu_matches_the_classic_order() -> None:
    torch.manual_seed(0)
    model = LeNet()
    images = torch.randn(8, 1, 28, 28)
    labels = torch.randint(0, 10, (8,))

    def classic(x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(model.conv1(x)), 2)
        x = F.max_pool2d(F.relu(model.conv2(x)), 2)
        return model.fc2(F.relu(model.fc1(torch.flatten(x, 1))))  # type: ignore[no-any-return]

    def outputs_and_gradients(
        forward: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = forward(images)
        F.cross_entropy(logits, labels).backward()  # type: ignore[no-untyped-call]
        return [logits.detach(), *(p.grad for p in model.parameters() if p.grad is not None)]

    ours, reference = outputs_and_gradients(model), outputs_and_gradients(classic)
    assert len(ours) == len(reference) == 9
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "momentum", "weight_decay"),
    [
        ("sgd", 0.0, 0.0),
        ("sgd", 0.9, 0.0),
        ("sgd", 0.5, 0.01),
        ("adam", 0.0, 0.0),
        ("adam", 0.0, 0.01),
        ("adamw", 0.0, 0.05),
    ],
)
def test_optimizers_step_exactly_like_torch_optim(
    name: str, momentum: float, weight_decay: float
) -> None:
    hp = Hyperparameters(
        learning_rate=0.05, momentum=momentum, optimizer=name, weight_decay=weight_decay
    )
    torch.manual_seed(0)
    ours, theirs = LeNet(), LeNet()
    theirs.load_state_dict(ours.state_dict())
    reference: torch.optim.Optimizer = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay),
        "adam": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=weight_decay),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=weight_decay),
    }[name](theirs.parameters())
    optimizer = make_optimizer(ours, hp)
    initial = [p.detach().clone() for p in ours.parameters()]
    for _ in range(4):
        images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        for model, step in ((ours, optimizer), (theirs, reference)):
            step.zero_grad()
            F.cross_entropy(model(images), labels).backward()  # type: ignore[no-untyped-call]
            step.step()
    assert all(not torch.equal(p, q) for p, q in zip(ours.parameters(), initial, strict=True))
    for mine, expected in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-6)


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_small_cpu_batches_step_on_one_thread_and_others_on_all() -> None:
    assert step_threads(ONE_THREAD_BELOW_BATCH - 1, 4, CPU) == 1
    assert step_threads(ONE_THREAD_BELOW_BATCH, 4, CPU) == 4
    assert step_threads(1, 1, CPU) == 1
    # A GPU step does not run on the CPU's threads: nothing to decide there.
    assert step_threads(16, 4, CUDA) == 4


def test_the_thread_count_comes_back_even_when_the_block_fails() -> None:
    inside = []

    def fail_on_one_thread() -> None:
        with threads(1):
            inside.append(torch.get_num_threads())
            raise DivergedError

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(DivergedError):
            fail_on_one_thread()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert inside == [1]


@pytest.mark.parametrize(("batch_size", "stepping"), [(16, 1), (32, 2)])
def test_training_steps_use_the_policys_threads_and_evaluation_all(
    monkeypatch: pytest.MonkeyPatch, batch_size: int, stepping: int
) -> None:
    seen: dict[str, set[int]] = {"step": set(), "evaluate": set()}
    step, evaluate = training.train_step, training.evaluate

    def recording_step(*args: torch.Tensor) -> torch.Tensor:
        seen["step"].add(torch.get_num_threads())
        return step(*args)  # type: ignore[arg-type]

    def recording_evaluate(model: torch.nn.Module, split: Split) -> training.Evaluation:
        seen["evaluate"].add(torch.get_num_threads())
        return evaluate(model, split)

    monkeypatch.setattr(training, "train_step", recording_step)
    monkeypatch.setattr(training, "evaluate", recording_evaluate)
    split = Split(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        training.train(
            Hyperparameters(batch_size=batch_size, epochs=2), split, split, seed=0, on_epoch=print
        )
    finally:
        torch.set_num_threads(before)
    assert seen == {"step": {stepping}, "evaluate": {2}}
