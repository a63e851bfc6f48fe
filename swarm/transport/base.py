"""The interface every transport backend implements.

A transport moves opaque byte payloads (signed, compressed envelopes) between the nodes of one swarm. It
never interprets them: admission (swarm/admission.py) is the one gate for what arrives. It is synchronous
from the caller's side; a backend runs its own event loop (asyncio, trio) on its own thread.

Lifecycle: ``start()`` (listening, bootstrapped) -> any number of ``publish`` / ``incoming`` -> ``stop()``
(idempotent; leaves no child process, thread or socket behind).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class TransportError(RuntimeError):
    """Base of transport failures the node can handle (cannot listen, cannot reach any bootstrap peer)."""


class BootstrapError(TransportError):
    """None of the given initial peers could be reached."""


@dataclass
class Received:
    payload: bytes
    sender: str | None = None
    """The peer id that the transport authenticated as the sender (or the record owner), when it knows;
    admission rejects an envelope whose signer differs."""
    received_at: float = 0.0


@dataclass
class TransportStats:
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Transport(ABC):
    @abstractmethod
    def start(self) -> None:
        """Listen, connect to the initial peers, return when ready to publish. Raises TransportError."""

    @abstractmethod
    def publish(self, payload: bytes) -> None:
        """Make ``payload`` reach every peer of the swarm (best effort, non-blocking or briefly blocking)."""

    @abstractmethod
    def incoming(self, max_items: int | None = None) -> list[Received]:
        """Drain what arrived since the last call (never blocks). Own payloads are not returned."""

    @abstractmethod
    def peers(self) -> list[str]:
        """Peer ids currently known to be part of the swarm (excluding this node)."""

    @abstractmethod
    def addresses(self) -> list[str]:
        """Multiaddrs (ending in /p2p/<peer id>) that another node can pass to ``--peers``."""

    @abstractmethod
    def stop(self) -> None:
        """Shut down; idempotent."""

    @property
    def peer_id(self) -> str:
        raise NotImplementedError

    def stats(self) -> TransportStats:
        return TransportStats()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
