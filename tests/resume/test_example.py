"""examples/resume.py, stopped and restarted as a user would, ends where an uninterrupted
run ends, bit for bit."""
import pathlib
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
    preempted.wait_for(r"step 30: loss")
    preempted.process.send_signal(signal.SIGTERM)
    code, _ = preempted.finish(timeout=120)
    assert code == 143, preempted.output

    crashed = Job(args, tmp_path)  # ... requeues it, and later the node dies (SIGKILL)
    crashed.wait_for(r"resumed at epoch \d, step \d+")
    crashed.wait_for(r"step 50: loss")
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
