"""How much faster one trial of our trainer is than the classic per-sample pipeline.

Runs, alternating, whole processes of
  (a) a reference: Katib's pytorch-mnist recipe on MNIST -- the same LeNet and optimizer,
      torchvision's per-sample path (uint8 -> PIL image -> ToTensor, i.e. float/255 per
      image) collated by a DataLoader, one epoch over the 60,000 training images, then the
      test set in batches of 1,000;
  (b) `python -m mnist_trainer --kernels=eager`: one epoch over 50,000 images, validation
      on the held-out 10,000, test once, on PyTorch's eager operators;
  (c) the same with `--kernels=compiled`: the training step through trainer/kernels;
and prints per batch size the median wall-time ratio of each of ours to the reference, the
accuracies, and our training epochs against the FLOP lower bound at the sgemm rate measured
right before each round (a shared machine's speed drifts within minutes, so one up-front
figure misleads).

    .venv/bin/python benchmarks/trainer.py [--repeats 3] [--batch-sizes 64 16]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATE = 0.01  # Katib's pytorch-mnist defaults
MOMENTUM = 0.5
SEED = 1
KERNELS = ("eager", "compiled")  # our two training steps, each run in every round


def reference(data_dir: str, batch_size: int) -> None:
    """The classic pipeline, in this process: what a Katib example trial does per epoch."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
    from torchvision import datasets, transforms

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5, 1)
            self.conv2 = nn.Conv2d(20, 50, 5, 1)
            self.fc1 = nn.Linear(4 * 4 * 50, 500)
            self.fc2 = nn.Linear(500, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
            x = F.relu(self.fc1(x.view(-1, 4 * 4 * 50)))
            return F.log_softmax(self.fc2(x), dim=1)

    torch.manual_seed(SEED)
    to_tensor = transforms.ToTensor()
    train = datasets.MNIST(data_dir, train=True, download=False, transform=to_tensor)
    test = datasets.MNIST(data_dir, train=False, download=False, transform=to_tensor)
    train_loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000, shuffle=False)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    started = time.perf_counter()
    model.train()
    for images, labels in train_loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(images), labels)
        loss.backward()
        optimizer.step()
    epoch_seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += int((model(images).argmax(dim=1) == labels).sum())
    print(f"accuracy={correct / len(test):.4f} seconds={epoch_seconds:.2f}", flush=True)


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of a whole process, start-up and data loading included."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return wall, result.stdout


def field(text: str, name: str) -> float:
    """The value of `name=` on the line that has it (the first space-bounded match)."""
    match = re.search(rf"(?:^|\s){re.escape(name)}=([-0-9.e]+)", text)
    if match is None:
        sys.exit(f"no {name}= in:\n{text}")
    return float(match.group(1))


def sgemm_gflops() -> tuple[float, int]:
    """This CPU's float32 matrix-multiply rate with torch's default threads, now."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(10 * 2 * 1024**3 / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates), torch.get_num_threads()


def epoch_bound(gflops: float) -> float:
    """Seconds one training epoch of 50,000 images needs at `gflops`, doing nothing else."""
    from mnist_trainer.model import TRAIN_FLOP_PER_SAMPLE

    return float(TRAIN_FLOP_PER_SAMPLE * 50_000 / (gflops * 1e9))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument(
        "--reference-same-openmp",
        action="store_true",
        help="give the reference our OpenMP spin setting too, to see the pipeline's share alone",
    )
    parser.add_argument("--reference-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_child:
        reference(args.data_dir, args.reference_child)
        return 0

    from mnist_trainer.model import TRAIN_FLOP_PER_SAMPLE

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    gflops, threads = sgemm_gflops()
    print(f"sgemm {gflops:.1f} GFLOP/s on {threads} threads now; FLOP bound for one epoch of")
    flop = TRAIN_FLOP_PER_SAMPLE / 1e6
    print(f"50,000 images at {flop:.2f} MFLOP each: {epoch_bound(gflops):.2f} s")
    ref_env = {**os.environ, "GOMP_SPINCOUNT": "1000"} if args.reference_same_openmp else None
    print(f"OpenMP spin: reference {'1000' if ref_env else 'default'}, ours 1000 (GOMP_SPINCOUNT)")
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in args.batch_sizes:
            ours_cmd = [
                sys.executable,
                "-m",
                "mnist_trainer",
                f"--learning-rate={LEARNING_RATE}",
                f"--momentum={MOMENTUM}",
                f"--batch-size={batch_size}",
                "--epochs=1",
                f"--seed={SEED}",
                f"--data-dir={args.data_dir}",
                f"--metrics-file={tmp}/metrics.json",
            ]
            ref_cmd = [
                sys.executable,
                __file__,
                f"--data-dir={args.data_dir}",
                f"--reference-child={batch_size}",
            ]
            ref_runs: list[tuple[float, str]] = []
            ours: dict[str, list[tuple[float, str]]] = {kernels: [] for kernels in KERNELS}
            bounds = []
            for pair in range(1, args.repeats + 1):
                ref_runs.append(timed(ref_cmd, ref_env))
                bounds.append(epoch_bound(sgemm_gflops()[0]))
                for kernels, runs in ours.items():
                    runs.append(timed([*ours_cmd, f"--kernels={kernels}"]))
                walls = ", ".join(f"{k} {runs[-1][0]:.1f} s" for k, runs in ours.items())
                print(
                    f"  batch {batch_size} round {pair}: reference {ref_runs[-1][0]:.1f} s, {walls}"
                )
            ref_epoch = statistics.median(field(r[1], "seconds") for r in ref_runs)
            print(f"\nbatch {batch_size}, {args.repeats} alternating rounds of whole processes")
            print(
                "  reference wall s: "
                + " ".join(f"{r[0]:.1f}" for r in ref_runs)
                + f"  (training epoch, 60,000 images: median {ref_epoch:.2f} s)"
                + "  test accuracy: "
                + " ".join(f"{field(r[1], 'accuracy'):.4f}" for r in ref_runs)
            )
            for kernels, runs in ours.items():
                report(kernels, ref_runs, runs, bounds)
    return 0


def report(
    kernels: str,
    ref_runs: list[tuple[float, str]],
    runs: list[tuple[float, str]],
    bounds: list[float],
) -> None:
    """One of our variants against the reference runs of the same rounds."""
    ratios = [r[0] / o[0] for r, o in zip(ref_runs, runs, strict=True)]
    epoch = statistics.median(field(o[1], "seconds") for o in runs)
    print(
        f"  {kernels:<8} wall s: "
        + " ".join(f"{o[0]:.1f}" for o in runs)
        + f"  (training epoch, 50,000 images: median {epoch:.2f} s)"
    )
    print(
        f"    speed-up over the reference, median of per-round ratios: "
        f"{statistics.median(ratios):.2f}x (rounds: {' '.join(f'{x:.2f}' for x in ratios)})"
    )
    print(
        "    validation accuracy: "
        + " ".join(f"{field(o[1], 'accuracy'):.4f}" for o in runs)
        + "  test accuracy: "
        + " ".join(f"{field(o[1], 'test-accuracy'):.4f}" for o in runs)
    )
    over_bound = [field(o[1], "seconds") / b for o, b in zip(runs, bounds, strict=True)]
    print(
        f"    training epoch / FLOP bound, median: {statistics.median(over_bound):.2f}x "
        f"(per run: {' '.join(f'{x:.2f}' for x in over_bound)}; "
        f"bound {min(bounds):.2f}-{max(bounds):.2f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
