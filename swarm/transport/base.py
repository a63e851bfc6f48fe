"""The interface every transport backend implements.

A transport moves opaque byte payloads (signed, compressed envelopes) between the nodes of one swarm. It
never interprets them: admission (swarm/admission.py) is the one gate for what arrives. It is synchronous
from the caller's side; a backend runs its own event loop (asyncio, trio) on its own thread.

Lifecycle: ``start()`` (listening, bootstrapped) -> any number of ``publish`` / ``incoming`` -> ``stop()``
(idempotent; leaves no child process, thread or socket behind).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
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


INBOX_MAX = 10_000
INBOX_MAX_BYTES = 256 * 1024 * 1024
"""What a transport holds for the node between two ``incoming()`` calls. Past either bound the oldest payload is
dropped and counted (``errors["inbox_overflow"]``): a flood costs bounded memory, never an unbounded queue."""


class Inbox:
    """The thread-safe, bounded queue between a backend's event loop (``put``) and the node (``drain``).
    ``lock`` and ``stats`` are the transport's own, so messages_in / bytes_in / errors stay in one place."""

    def __init__(self, lock: threading.Lock, stats: TransportStats, max_items: int = INBOX_MAX,
                 max_bytes: int = INBOX_MAX_BYTES):
        self._lock, self._stats = lock, stats
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[Received] = deque()
        self._bytes = 0

    def put(self, payload: bytes, sender: str | None) -> None:
        with self._lock:
            self._items.append(Received(payload=payload, sender=sender, received_at=time.time()))
            self._bytes += len(payload)
            self._stats.messages_in += 1
            self._stats.bytes_in += len(payload)
            while len(self._items) > self.max_items or (self._bytes > self.max_bytes and len(self._items) > 1):
                self._bytes -= len(self._items.popleft().payload)
                self._stats.errors["inbox_overflow"] = self._stats.errors.get("inbox_overflow", 0) + 1

    def drain(self, max_items: int | None = None) -> list[Received]:
        out = []
        with self._lock:
            while self._items and (max_items is None or len(out) < max_items):
                item = self._items.popleft()
                self._bytes -= len(item.payload)
                out.append(item)
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


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
