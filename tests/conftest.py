import os

import pytest
import torch.distributed as dist


@pytest.fixture(autouse=True)
def restore_environment():
    """Undo environment changes and tear down any process group a test left behind."""
    saved = dict(os.environ)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)
