"""Redis Streams into the event log: the hourly drain of served impressions and feedback.

``drain_events(cfg, data_dir, logical_time)`` is the stage function (the
``videorec_event_drain`` DAG and ``videorec drain-events`` call it); see
:mod:`videorec.streaming.drain` for its crash semantics.
"""

from videorec.streaming.drain import drain_events

__all__ = ["drain_events"]
