"""Where one CPU training step of the trainer goes: counts first, then time shares.

For each batch size it prints, for `mnist_trainer.train.train_step` on the LeNet:
  - operators dispatched per step and bytes of new tensors they allocate (counted with a
    TorchDispatchMode, so the figures do not depend on the machine's speed);
  - voluntary context switches per step on 1 and on 2 threads: each is a thread going to
    sleep, i.e. an OpenMP wake-up the next parallel region pays for;
  - step time on 1 and on 2 threads, alternating rounds in this process (median), and the
    trainer's choice (`step_threads`);
  - the operators taking most of the step's time at that choice (torch.profiler);
  - the step's FLOP bound at the 2-thread sgemm rate measured in the same run;
  - the compiled step (trainer/kernels) on 1 and 2 threads, timed in the same alternating
    rounds, against the eager step at the trainer's choice and against the bound.

    .venv/bin/python benchmarks/trainer_step.py [--batch-sizes 16 64] [--rounds 6]
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import sys
import time
from typing import Any

from mnist_trainer import host

host.configure()  # before torch loads, as `python -m mnist_trainer` does

import torch  # noqa: E402
from mnist_trainer.compiled import CompiledStep, instructions  # noqa: E402
from mnist_trainer.config import Hyperparameters  # noqa: E402
from mnist_trainer.model import TRAIN_FLOP_PER_SAMPLE, LeNet  # noqa: E402
from mnist_trainer.train import make_optimizer, step_threads, train_step  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from trainer import sgemm_gflops  # noqa: E402  # benchmarks/trainer.py, beside this file

POOL = 4096  # random images the batches are drawn from


class Census(TorchDispatchMode):
    """Count aten operators and the bytes of the tensors they newly allocate."""

    def __init__(self) -> None:
        super().__init__()
        self.operators: collections.Counter[str] = collections.Counter()
        self.new_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in (*args, *kwargs.values())
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        self.operators[func.overloadpacket.__name__] += 1
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in inputs:
                    self.new_bytes += storage.nbytes()
        return out


class Trial:
    """A LeNet, its optimizer and a pool of images, stepped as the trainer steps."""

    def __init__(self, batch_size: int) -> None:
        torch.manual_seed(1)
        self.batch_size = batch_size
        self.model = LeNet().to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, Hyperparameters(batch_size=batch_size))
        self.images = torch.randn(POOL, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, 10, (POOL,))

    def steps(self, count: int, compiled: CompiledStep | None = None) -> None:
        for _ in range(count):
            index = torch.randint(0, POOL, (self.batch_size,))
            if compiled is None:
                train_step(self.model, self.optimizer, self.images[index], self.labels[index])
            else:
                compiled(self.images[index], self.labels[index])

    def timed(self, threads: int, count: int, compiled: bool = False) -> tuple[float, float]:
        """Seconds and voluntary context switches per step on `threads` threads."""
        torch.set_num_threads(threads)
        step = CompiledStep(self.model, self.optimizer, threads) if compiled else None
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        started = time.perf_counter()
        self.steps(count, step)
        seconds = (time.perf_counter() - started) / count
        return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches) / count


def sgemm_rate(threads: int) -> float:
    """The sgemm rate on `threads` threads, measured as benchmarks/trainer.py measures it."""
    torch.set_num_threads(threads)
    return sgemm_gflops()[0]


def report(batch_size: int, rounds: int, gflops: float) -> None:
    trial = Trial(batch_size)
    trial.steps(20)
    with Census() as census:
        trial.steps(1)
    print(f"\nbatch {batch_size}")
    top = ", ".join(f"{name} {n}" for name, n in census.operators.most_common(6))
    print(f"  operators per step: {census.operators.total()} ({top}, ...)")
    print(f"  bytes of new tensors per step: {census.new_bytes / 1e6:.2f} MB")
    count = max(40, 2000 // batch_size)
    times: dict[int, list[float]] = {1: [], 2: []}
    switches: dict[int, list[float]] = {1: [], 2: []}
    compiled: dict[int, list[float]] = {1: [], 2: []}
    for threads in times:
        trial.timed(threads, count // 4)  # warm each thread count's kernels
        trial.timed(threads, count // 4, compiled=True)
    for _ in range(rounds):
        for threads in times:
            seconds, switched = trial.timed(threads, count)
            times[threads].append(seconds)
            switches[threads].append(switched)
            compiled[threads].append(trial.timed(threads, count, compiled=True)[0])
    for threads in times:
        print(
            f"  {threads} thread{'s' if threads > 1 else ' '}: "
            f"{statistics.median(times[threads]) * 1e3:6.3f} ms per step (median of {rounds}), "
            f"{statistics.median(switches[threads]):5.1f} context switches per step"
        )
    ratio = statistics.median(times[2]) / statistics.median(times[1])
    chosen = step_threads(batch_size, 2, torch.device("cpu"))
    print(f"  2 threads / 1 thread: {ratio:.2f}; the trainer steps on {chosen}")
    bound = batch_size * TRAIN_FLOP_PER_SAMPLE / (gflops * 1e9)
    best = min(statistics.median(times[1]), statistics.median(times[2]))
    print(f"  FLOP bound per step at 2-thread sgemm: {bound * 1e3:.3f} ms")
    print(f"  best step / bound: {best / bound:.2f}x")
    for threads, runs in compiled.items():
        seconds = statistics.median(runs)
        print(
            f"  compiled ({instructions()}), {threads} thread{'s' if threads > 1 else ' '}: "
            f"{seconds * 1e3:6.3f} ms per step, {best / seconds:.2f}x the eager step, "
            f"{seconds / bound:.2f}x the bound"
        )
    torch.set_num_threads(chosen)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        trial.steps(count)
    events = sorted(profiled.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  where the time goes on {chosen} thread(s) (self CPU time, torch.profiler):")
    for event in events[:8]:
        share = event.self_cpu_time_total / total
        per_step = event.self_cpu_time_total / count
        print(f"    {share:6.1%}  {per_step:7.1f} us/step  {event.key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    gflops = sgemm_rate(2)
    print(f"sgemm {gflops:.0f} GFLOP/s on 2 threads, {sgemm_rate(1):.0f} on 1, now")
    for batch_size in args.batch_sizes:
        report(batch_size, args.rounds, gflops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
