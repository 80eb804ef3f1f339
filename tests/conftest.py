import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # Child processes log through rich, which wraps at COLUMNS (80 without a terminal). A
    # message that names a temporary path would then break at a place that depends on the
    # path's length, and a test matching it would pass or fail by that length. Children
    # get a width no message reaches; pytest's own report keeps the terminal's.
    writer = config.get_terminal_writer()
    writer.fullwidth = writer.fullwidth
    os.environ["COLUMNS"] = "1000"


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo environment changes and tear down any process group a test left behind."""
    saved = dict(os.environ)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture()
def global_generators():
    """Put the test process's global random number generators back as they were."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
