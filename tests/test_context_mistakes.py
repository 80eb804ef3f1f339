"""Set-up mistakes that used to train silently wrong, made as a user makes them: real
``python exp.py ...`` runs, checked by their exit code, their output and their files."""
import re

import pytest
import torch

from pystematic_torch.context import Context
from tests.jobs import EXPERIMENT
from tests.support.jobs import Job, job_args

DONE = r"DONE rank=(\d) lr=([\d.]+) checksum=(-?[\d.]+)"


def run(tmp_path, *args, output="runs"):
    job = Job(job_args(*args, script=EXPERIMENT, output=tmp_path / output), tmp_path)
    code, _ = job.finish(timeout=150)
    return code, job.output


def says(output, text):
    """Whether ``output`` holds ``text``; the console breaks long lines, even inside paths."""
    return "".join(text.split()) in "".join(output.split())


@pytest.mark.timeout(200)
def test_distributed_without_autotransform_stops_at_the_first_training_step(tmp_path):
    code, output = run(tmp_path, "--distributed", "--nproc_per_node", "2",
                       "--mode", "no-autotransform")  # fmt: skip
    assert code != 0, output
    assert says(output, "ctx.model is being trained in a distributed run but is not wrapped")
    assert says(output, "call ctx.autotransform() (or ctx.ddp())")
    assert "DONE" not in output


@pytest.mark.timeout(300)
def test_a_checkpoint_is_loaded_or_the_run_says_why_not(tmp_path):
    code, output = run(tmp_path, "--steps", "3", output="first")
    assert code == 0, output
    (first_run,) = (tmp_path / "first" / "context-exp").iterdir()
    assert re.search(DONE, output)[2] == "0.0125000"  # 0.1 halved three times

    # The fix in place: the run continues from the checkpoint.
    code, output = run(tmp_path, "--checkpoint", str(first_run), output="resumed")
    assert code == 0, output
    assert re.search(DONE, output)[2] == "0.0015625"  # and three more
    assert "WARNING" not in output

    # Without autotransform() the checkpoint would be ignored: the run says so.
    code, output = run(tmp_path, "--checkpoint", str(first_run), "--mode", "no-autotransform",
                       output="forgot")  # fmt: skip
    assert code == 0, output
    assert says(output, f"--checkpoint {first_run} was given, but training started before any "
                "Context loaded a state, so this run starts from scratch; call ctx.autotransform()")
    assert re.search(DONE, output)[2] == "0.0125000"

    # An item registered after autotransform(): the error names the order as the cause.
    code, output = run(tmp_path, "--checkpoint", str(first_run), "--mode", "late-scheduler",
                       output="late")  # fmt: skip
    assert code != 0, output
    assert says(output, "unexpected in the checkpoint: scheduler (the context has no item of that "
                "name: register every item before ctx.autotransform()")
    assert "DONE" not in output
    (late_run,) = (tmp_path / "late" / "context-exp").iterdir()
    assert not list(late_run.glob("checkpoint-*"))


def test_an_item_registered_after_a_non_strict_load_that_skipped_its_state_warns(caplog):
    saved = Context()
    saved.model = torch.nn.Linear(2, 2)
    saved.scheduler_state = {"last_epoch": 4}
    ctx = Context()
    ctx.model = torch.nn.Linear(2, 2)
    with caplog.at_level("WARNING", logger="pystematic.torch"):
        ctx.load_state_dict(saved.state_dict(), strict=False)
        ctx.scheduler_state = {"last_epoch": 0}
        ctx.other = 1
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == (
        "Ignored checkpoint entries the context has no item for: ['scheduler_state']."
    )
    assert messages[1].startswith(
        "ctx.scheduler_state was registered after a checkpoint holding a state for it was "
        "loaded, so that state was not restored; register every item before"
    )
    assert len(messages) == 2


def test_only_the_registered_module_is_watched_and_only_until_training_starts(caplog):
    import copy
    import io

    from pystematic_torch import _session

    _session.start({"checkpoint": "runs/old"})
    try:
        ctx = Context()
        ctx.model = torch.nn.Linear(2, 2)
        teacher = copy.deepcopy(ctx.model)  # an EMA or target network, not an item
        buffer = io.BytesIO()
        torch.save(ctx.model, buffer)
        buffer.seek(0)
        unpickled = torch.load(buffer, weights_only=False)
        with caplog.at_level("WARNING", logger="pystematic.torch"):
            with torch.no_grad():
                ctx.model(torch.ones(2))  # evaluation is not training
            teacher(torch.ones(2)).sum().backward()
            unpickled(torch.ones(2)).sum().backward()
            assert not caplog.records
            ctx.model(torch.ones(2)).sum().backward()
            ctx.model(torch.ones(2)).sum().backward()
        assert [r.getMessage()[:40] for r in caplog.records] == [
            "--checkpoint runs/old was given, but tra"
        ]
        assert not ctx.model._forward_pre_hooks  # the watch is gone: the loop pays nothing
    finally:
        _session.end()
