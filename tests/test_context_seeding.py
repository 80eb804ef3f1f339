"""--random-seed seeds Python, NumPy and torch; ranks share a stream until ctx.ddp()."""
import importlib.util
import random
import re

import numpy as np
import pytest
import torch

from pystematic_torch import _seeding
from tests.jobs import EXPERIMENT
from tests.support.jobs import Job, job_args

LINE = r"{tag} rank=(\d) ([\d. ]+ mask=[02]+)"


def expected_first_draws(seed):
    """What the experiment draws first if its run was seeded by hand with ``seed``."""
    spec = importlib.util.spec_from_file_location("context_exp", EXPERIMENT)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return experiment.draws()


def lines(output, tag):
    return dict(re.findall(LINE.format(tag=tag), output))


@pytest.mark.timeout(200)
def test_the_random_seed_parameter_seeds_every_library(tmp_path, global_generators):
    for seed in (7, 8):
        args = job_args("--random-seed", str(seed), script=EXPERIMENT, output=tmp_path)
        job = Job(args, tmp_path)
        code, _ = job.finish(timeout=150)
        assert code == 0, job.output
        assert lines(job.output, "SEEDED") == {"0": expected_first_draws(seed)}, job.output


@pytest.mark.timeout(300)
def test_ranks_share_the_seeded_stream_until_ddp_then_draw_their_own_repeatably(
    tmp_path, global_generators
):
    args = ("--distributed", "--nproc_per_node", "2", "--random-seed", "7")
    launches = [Job(job_args(*args, script=EXPERIMENT, output=tmp_path / name), tmp_path)
                for name in ("a", "b")]  # fmt: skip
    outputs = []
    for job in launches:
        code, _ = job.finish(timeout=250)
        assert code == 0, job.output
        outputs.append(job.output)

    seeded, ranked = lines(outputs[0], "SEEDED"), lines(outputs[0], "RANKED")
    assert seeded == {"0": expected_first_draws(7), "1": expected_first_draws(7)}
    assert ranked["0"] != ranked["1"]
    mask = {rank: line.split("mask=")[1] for rank, line in ranked.items()}
    assert mask["0"] != mask["1"]  # dropout differs between ranks after ddp()
    assert lines(outputs[1], "RANKED") == ranked  # and repeats in a run with the same seed
    done = dict(re.findall(r"DONE rank=(\d) lr=[\d.]+ checksum=(-?[\d.]+)", outputs[0]))
    assert set(done) == {"0", "1"} and done["0"] == done["1"]  # and they still train as one


def test_seeding_by_hand_and_with_big_or_negative_seeds_is_repeatable(global_generators):
    def first_draws():
        return random.random(), np.random.random_sample(), torch.rand(1).item()

    _seeding.seed_everything(12)
    by_us = first_draws()
    random.seed(12)
    np.random.seed(12)
    torch.manual_seed(12)
    assert first_draws() == by_us
    for seed in (2**40 + 3, -5, 2**70):
        _seeding.seed_everything(seed)
        once = first_draws()
        _seeding.seed_everything(seed)
        assert first_draws() == once
        assert once != by_us


def test_diverging_gives_each_rank_its_own_stream_from_the_shared_one(global_generators):
    def after_diverging(rank, seed=3):
        _seeding.seed_everything(seed)
        _seeding.diverge_ranks(rank)
        return random.random(), np.random.random_sample(), torch.rand(1).item()

    assert after_diverging(0) == after_diverging(0)
    assert after_diverging(0) != after_diverging(1)
    assert after_diverging(1, seed=3) != after_diverging(0, seed=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_cuda_device_is_seeded(global_generators):
    def cuda_draws():
        return [torch.rand(3, device=f"cuda:{index}").tolist()
                for index in range(torch.cuda.device_count())]  # fmt: skip

    _seeding.seed_everything(9)
    first = cuda_draws()
    _seeding.seed_everything(9)
    assert cuda_draws() == first
    torch.cuda.manual_seed_all(9)
    assert cuda_draws() == first
