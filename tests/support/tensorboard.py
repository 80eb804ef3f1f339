"""Reading what a run wrote for TensorBoard, with TensorBoard's own reader."""


def read_events(directory):
    """Every event of the run in ``directory``, nothing sampled away."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}
    )
    accumulator.Reload()
    return accumulator


def session_status(directory):
    """(status, end time) of the run's session, as TensorBoard's HParams tab reads them."""
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    events = read_events(directory)
    content = events.SummaryMetadata(hparams_metadata.SESSION_END_INFO_TAG).plugin_data.content
    end = hparams_metadata.parse_session_end_info_plugin_data(content)
    return end.status, end.end_time_secs
