"""examples/resume.py, stopped and restarted as a user would, ends where an uninterrupted
run ends, bit for bit."""
import pathlib
import re
import signal

import pytest

from tests.resume.test_exact_resume import differences, load_state
from tests.support.jobs import Job, assert_all_gone, family, job_args

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "resume.py"
COMMAND = ("--epochs", "3", "--random-seed", "5")


def only_run(output):
    (run,) = (output / "resume-example").iterdir()
    return run


@pytest.mark.timeout(600)
def test_the_example_stopped_twice_ends_like_an_uninterrupted_run(tmp_path):
    reference = Job(job_args(*COMMAND, script=EXAMPLE, output=tmp_path / "reference"), tmp_path)
    code, _ = reference.finish(timeout=240)
    assert code == 0, reference.output

    output = tmp_path / "requeued"
    args = job_args("--checkpoint", "latest", *COMMAND, script=EXAMPLE, output=output)
    preempted = Job(args, tmp_path)  # the scheduler preempts the job with SIGTERM ...
    preempted.wait_for(r"step 10: loss")
    preempted.process.send_signal(signal.SIGTERM)
    code, _ = preempted.finish(timeout=120)
    assert code == 143, preempted.output

    crashed = Job(args, tmp_path)  # ... requeues it, and later the node dies (SIGKILL)
    crashed.wait_for(r"resumed at epoch \d, step \d+")
    # The run stops at the batch after the signal arrives, which under load can be many
    # steps after the line the signal followed: the crash comes after the first step this
    # run logs itself (a line every 10 steps; 3 epochs of 29 batches make 87).
    resumed = int(re.search(r"resumed at epoch \d, step (\d+)", crashed.output).group(1))
    assert resumed < 80, f"the preemption came too late to leave steps to crash in: {resumed}"
    crashed.wait_for(rf"step {(resumed // 10 + 1) * 10}: loss")
    processes = family(crashed)
    crashed.process.kill()
    crashed.finish()
    assert_all_gone(processes, within=30)

    finished = Job(args, tmp_path)  # the same command once more
    code, _ = finished.finish(timeout=240)
    assert code == 0, finished.output
    assert "resumed at epoch" in finished.output

    run = only_run(output)
    final = differences(load_state(run / "checkpoint-epoch3.pt"),
                        load_state(only_run(tmp_path / "reference") / "checkpoint-epoch3.pt"))
    assert not final, final
