"""Experiment scripts that tests run as users run them: ``python script.py --flags``."""
import pathlib

EXPERIMENT = pathlib.Path(__file__).parent / "context_exp.py"
