"""Exact resume: a run interrupted and resumed in new processes ends bit-identical to one
that never stopped.

The matrix {epoch boundary, mid-epoch after SIGKILL, mid-epoch after SIGTERM} x {1 process,
2 gloo ranks} x {0 workers, 2 workers, persistent workers}, with dropout, a random
augmentation in the dataset and a Recorder. To keep it to a few minutes, each (ranks,
workers) cell runs the three interruptions as one chain of four launches of the same
command (``--checkpoint latest``, as a requeued job runs), each resuming where the previous
one stopped:

1. SIGTERM in the middle of epoch 0: the automatic preemption checkpoint after the next
   batch, exit code 143;
2. resumed from it, SIGKILL in the middle of epoch 1, two steps after a periodic checkpoint,
   which the next launch resumes from (so those two steps are trained twice);
3. resumed from it, ``--epochs 2``: the run ends at an epoch boundary;
4. ``--epochs 3`` continues from that epoch's checkpoint to the end.

Each launch must continue exactly, or the chain's end differs: it is compared with an
uninterrupted run of ``--epochs 3`` (one per world size: the data a sample gets does not
depend on the number of workers, so every worker setting must end at that same state).
Every checkpoint both runs wrote at the same step must be identical too, which says where
a divergence began, and ``scalars.csv`` must match row for row.
"""
import csv
import os
import pathlib
import re
import signal

import pytest
import torch

from tests.support.jobs import Job, assert_all_gone, family, job_args

JOB = pathlib.Path(__file__).parent / "jobs" / "train.py"
DISTRIBUTED = ("--distributed", "--nproc_per_node", "2")
SAMPLES, BATCH, EVERY = 48, 4, 4
METADATA_KEY = "_pystematic_torch"


def steps_per_epoch(ranks):
    return SAMPLES // (BATCH * ranks)


def launch(output, *args, ranks, fifo=None):
    extra = DISTRIBUTED if ranks == 2 else ()
    pause = ("--pause-fifo", str(fifo)) if fifo is not None else ()
    common = ("--samples", str(SAMPLES), "--checkpoint-every", str(EVERY), "--random-seed", "3")
    return Job(job_args(*extra, *common, *pause, *args, script=JOB, output=output), output)


def finish(job, expected_code=0):
    code, _ = job.finish(timeout=180)
    assert code == expected_code, job.output
    return job


def release(fifo):
    with open(fifo, "w") as handle:
        handle.write("go\n")


def only_run(output):
    (run,) = (output / "resume-job").iterdir()
    return run


def checkpoints(run):
    return {path.name: path for path in run.glob("checkpoint-*.pt")}


def load_state(path):
    state = torch.load(path, weights_only=True)
    state.pop(METADATA_KEY)  # when and by which command it was saved
    # Where the recorder writes is not training state: the runs compared write to different
    # directories by design.
    state.get("recorder", {}).pop("output_dir", None)
    return state


def differences(mine, theirs, path="state"):
    """Every place where two loaded states differ, bit for bit."""
    if isinstance(mine, torch.Tensor) or isinstance(theirs, torch.Tensor):
        same = (
            isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor)
            and mine.dtype == theirs.dtype and mine.shape == theirs.shape
            and torch.equal(mine, theirs)
        )  # fmt: skip
        return [] if same else [path]
    if isinstance(mine, dict) and isinstance(theirs, dict):
        if mine.keys() != theirs.keys():
            return [f"{path}: keys {sorted(map(str, mine))} != {sorted(map(str, theirs))}"]
        return [d for key in mine for d in differences(mine[key], theirs[key], f"{path}.{key}")]
    if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
        if len(mine) != len(theirs):
            return [f"{path}: lengths {len(mine)} != {len(theirs)}"]
        return [d for i, (a, b) in enumerate(zip(mine, theirs))
                for d in differences(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if type(mine) is type(theirs) and mine == theirs else [f"{path}: {mine} != {theirs}"]


def scalar_rows(run):
    with open(run / "scalars.csv", newline="") as handle:
        return [(row["step"], row["tag"], row["value"]) for row in csv.DictReader(handle)]


def paused_at(job, step):
    job.wait_for(rf"PAUSED step={step}\b", timeout=150)


def first_step_of(job):
    return int(re.search(r"READY step=(\d+)", job.output).group(1))


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """An uninterrupted run per world size, started lazily and kept for the module."""
    runs = {}

    def reference(ranks):
        if ranks not in runs:
            output = tmp_path_factory.mktemp(f"reference-{ranks}")
            finish(launch(output, "--epochs", "3", ranks=ranks))
            runs[ranks] = only_run(output)
        return runs[ranks]

    return reference


def assert_same_run(resumed, reference):
    final = differences(load_state(resumed / "checkpoint-epoch3.pt"),
                        load_state(reference / "checkpoint-epoch3.pt"))  # fmt: skip
    assert not final, final
    mine, theirs = checkpoints(resumed), checkpoints(reference)
    assert set(theirs) <= set(mine), sorted(set(theirs) - set(mine))
    for name in sorted(theirs):
        diverged = differences(load_state(mine[name]), load_state(theirs[name]))
        assert not diverged, (name, diverged)
    assert scalar_rows(resumed) == scalar_rows(reference)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", ["0", "2", "persistent"])
@pytest.mark.parametrize("ranks", [1, 2])
def test_interrupted_and_resumed_runs_end_bit_identical(tmp_path, references, ranks, workers):
    per_epoch = steps_per_epoch(ranks)
    # Ranks agree on stopping at the first two batches of an epoch, then about every half
    # second: a signal during a pause after step 1 stops them at batch 2 of epoch 0.
    sigterm_at = per_epoch // 2 + 1 if ranks == 1 else 1
    # Mid-epoch 1, two steps after a periodic checkpoint: the resumed run repeats them.
    sigkill_at = next(s for s in range(per_epoch + per_epoch // 2, 2 * per_epoch)
                      if s % EVERY == 2)  # fmt: skip
    output, fifo = tmp_path / "output", tmp_path / "pause"
    output.mkdir()
    os.mkfifo(fifo)
    common = ("--checkpoint", "latest", "--workers", workers)

    # 1. SIGTERM mid-epoch 0: the loop stops at the next batch and the Context is saved.
    first = launch(output, *common, "--epochs", "3", "--pause-at", str(sigterm_at),
                   ranks=ranks, fifo=fifo)  # fmt: skip
    paused_at(first, sigterm_at)
    first.process.send_signal(signal.SIGTERM)
    release(fifo)
    finish(first, expected_code=143)
    run = only_run(output)
    preempted = load_state(checkpoints(run)["checkpoint-preempted.pt"])
    assert (preempted["loader"]["epoch"], preempted["loader"]["position"]) == (0, sigterm_at)

    # 2. Resumed from the preemption checkpoint; SIGKILL mid-epoch 1.
    second = launch(output, *common, "--epochs", "3", "--pause-at", str(sigkill_at),
                    ranks=ranks, fifo=fifo)  # fmt: skip
    paused_at(second, sigkill_at)
    assert first_step_of(second) == sigterm_at
    processes = family(second)
    second.process.kill()
    second.finish()
    assert_all_gone(processes, within=30)

    # 3. Resumed from the last periodic checkpoint; ends at the end of epoch 2 (index 1).
    third = finish(launch(output, *common, "--epochs", "2", ranks=ranks))
    assert first_step_of(third) == sigkill_at - 2, third.output
    assert "checkpoint-epoch2.pt" in checkpoints(run)

    # 4. Continued from that epoch boundary to the end.
    fourth = finish(launch(output, *common, "--epochs", "3", ranks=ranks))
    assert first_step_of(fourth) == 2 * per_epoch, fourth.output
    assert only_run(output) == run  # every launch continued the same run directory

    assert_same_run(run, references(ranks))
