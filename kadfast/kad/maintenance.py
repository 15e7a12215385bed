"""What a node's maintenance step has to do at a given time, sans-IO.

:class:`MaintenanceSchedule` remembers when each periodic job last ran and
:meth:`MaintenanceSchedule.due` says, for ``now``, which are due (and counts
them as run). ``KadNode.maintenance`` does the work; nothing here reads a
clock, starts a task or touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config

__all__ = ["Due", "MaintenanceSchedule"]


@dataclass(slots=True)
class Due:
    """The jobs due in one maintenance step."""

    #: reset the inbound kad streams whose last whole request (or start)
    #: came before this time (kad_stream_idle_timeout); None: not now
    idle_streams_before: float | None = None
    #: reset the inbound kad streams holding a message begun before this
    #: time and unfinished (kad_message_timeout); None: not now
    unfinished_before: float | None = None
    #: sweep expired records and providers, recount the IP groups
    sweep: bool = False
    #: start a periodic bootstrap
    bootstrap: bool = False
    #: start a replication round (and republish our own records that are due)
    replication: bool = False
    #: start a provider republication round
    provider_republish: bool = False


class MaintenanceSchedule:
    """When each periodic job last ran (None: never), on the node's clock;
    ``config`` is the node's :class:`~kadfast.kad.node.Config`."""

    __slots__ = ("config", "last_idle_check", "last_partial_check", "last_sweep", "last_bootstrap",
                 "last_replication", "last_provider_republish")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_idle_check: float | None = None
        self.last_partial_check: float | None = None
        self.last_sweep: float | None = None
        #: also set by a bootstrap that was not the schedule's (KadNode.bootstrap)
        self.last_bootstrap: float | None = None
        self.last_replication: float | None = None
        self.last_provider_republish: float | None = None

    def due(self, now: float, *, unfinished_messages: bool, table_peers: int) -> Due:
        """The jobs due at ``now``, each counted as run at ``now``.
        ``unfinished_messages``: some inbound kad stream holds an unfinished
        message; ``table_peers``: the routing table's size (no bootstrap
        without a peer to ask). Replication and provider republication are
        first due one interval after the first step."""
        cfg = self.config
        out = Due()
        idle = cfg.kad_stream_idle_timeout
        if idle and (self.last_idle_check is None or now - self.last_idle_check >= min(idle / 4, 15.0)):
            self.last_idle_check = now
            out.idle_streams_before = now - idle
        timeout = cfg.kad_message_timeout
        if timeout and unfinished_messages and (
                self.last_partial_check is None or now - self.last_partial_check >= timeout / 4):
            self.last_partial_check = now
            out.unfinished_before = now - timeout
        # once per sweep_interval, not every step (a MemoryStore walks its
        # records; SqliteStore asks its expiry index)
        if self.last_sweep is None or now - self.last_sweep >= cfg.sweep_interval:
            self.last_sweep = now
            out.sweep = True
        if table_peers and (self.last_bootstrap is None or now - self.last_bootstrap >= cfg.periodic_bootstrap_interval):
            self.last_bootstrap = now
            out.bootstrap = True
        if self.last_replication is None:
            self.last_replication = now
        elif now - self.last_replication >= cfg.replication_interval:
            self.last_replication = now
            out.replication = True
        if self.last_provider_republish is None:
            self.last_provider_republish = now
        elif now - self.last_provider_republish >= cfg.provider_republish_interval:
            self.last_provider_republish = now
            out.provider_republish = True
        return out
