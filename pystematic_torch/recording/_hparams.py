"""What a run writes for TensorBoard's HParams tab: its parameters, and how it ended.

TensorBoard builds the tab from the runs themselves when no run carries an experiment
description: it lists the parameters whose values differ between runs first (then the
others, each group by name), offers every scalar of the runs as a metric, and shows each
session's status and end time from its end record. A per-run description would override
all of that (TensorBoard picks one run's arbitrarily and shows only its columns), so none is
written.

The framework's own parameters (those every experiment gets: ``output_dir``,
``random_seed``, ``cuda``, ``distributed``...) are recorded under the prefix
:data:`FRAMEWORK_PREFIX`. ``~`` sorts after every letter, so they come after the user's own
parameters in both of TensorBoard's groups and do not take the first, ticked columns from
them. Parameters whose value is None are left out of the session: TensorBoard shows an
empty cell, and a numeric column stays numeric.
"""
import functools
from typing import Any, Dict, FrozenSet

from .. import _session

#: Put in front of the names of the framework's own parameters in the HParams tab.
FRAMEWORK_PREFIX = "~pystematic."


@functools.lru_cache(maxsize=1)
def framework_parameter_names() -> FrozenSet[str]:
    """The names of the parameters pystematic and this plugin give every experiment."""
    from pystematic.standard_plugin.standard_plugin import standard_params

    from ..params import default_parameters

    return frozenset(p.name for p in standard_params) | frozenset(
        p.name for p in default_parameters()
    )


def shown_name(name: str) -> str:
    """The name a parameter has in the HParams tab."""
    return FRAMEWORK_PREFIX + name if name in framework_parameter_names() else name


def session_start_value(params: Dict[str, Any], wall_time: float) -> Any:
    """The summary value that starts a session with ``params``."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    session = plugin_data_pb2.SessionStartInfo(start_time_secs=wall_time)
    for name, value in params.items():
        if value is None:
            continue
        field = {bool: "bool_value", str: "string_value"}.get(type(value), "number_value")
        setattr(session.hparams[shown_name(name)], field, value)
    return _value(metadata.SESSION_START_INFO_TAG,
                  plugin_data_pb2.HParamsPluginData(session_start_info=session))  # fmt: skip


def session_end_value(outcome: str, wall_time: float) -> Any:
    """The summary value that ends a session: its status and end time."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(
        status=tensorboard_status(outcome), end_time_secs=wall_time
    )
    return _value(metadata.SESSION_END_INFO_TAG,
                  plugin_data_pb2.HParamsPluginData(session_end_info=end))  # fmt: skip


def tensorboard_status(outcome: str) -> int:
    """TensorBoard's session status for how a run ended.

    TensorBoard knows success, failure, running and unknown. A preempted run stopped to be
    resumed and has not finished, so it shows as running; a run stopped with Ctrl-C did not
    finish either and shows as a failure.
    """
    from tensorboard.plugins.hparams import api_pb2

    return {
        _session.SUCCESS: api_pb2.STATUS_SUCCESS,
        _session.FAILURE: api_pb2.STATUS_FAILURE,
        _session.INTERRUPTED: api_pb2.STATUS_FAILURE,
        _session.PREEMPTED: api_pb2.STATUS_RUNNING,
    }.get(outcome, api_pb2.STATUS_UNKNOWN)


def _value(tag: str, plugin_data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    return summary_pb2.Summary.Value(
        tag=tag, tensor=metadata.NULL_TENSOR, metadata=metadata.create_summary_metadata(plugin_data)
    )
