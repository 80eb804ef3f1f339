import pathlib

import pystematic
import pytest


@pytest.fixture
def run_experiment(tmp_path):
    """Run ``body(params)`` inside a real pystematic experiment; returns its run directory.

    The experiment has one parameter of its own, ``hidden`` (an int, default 8), standing
    for a model size.
    """

    def run(body, output_dir=None, **params):
        seen = {}

        @pystematic.parameter(name="hidden", type=int, default=8)
        @pystematic.experiment
        def checkpoint_test(p):
            seen["run_dir"] = pathlib.Path(str(pystematic.output_dir))
            body(p)

        checkpoint_test.run({"output_dir": str(output_dir or tmp_path), **params})
        return seen["run_dir"]

    return run
