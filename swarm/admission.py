"""Admission: the validation pipeline every payload from a peer passes before it may reach the trainer.

``Admission.admit(payload, transport_sender)`` returns a ``RolloutGroup`` (task re-derived, completions
re-scored by this node's own verifier) or ``None``; it never raises. Every rejection is counted by reason
(``stats()``) and logged at DEBUG with the peer. Checks run cheapest first, and nothing an unauthenticated
payload does touches per-peer state (so a forger cannot spend an honest peer's rate budget, poison its
replay window or spoil its reputation):

 0. ``ignored_peer``   the transport's (authenticated) sender is ignored by the reputation (``reputation``)
 1. ``oversize``       compressed size, declared and actual decompressed size (zstd bomb safe), and beyond
                       ``RATIO_FREE_BYTES`` the compression ratio (``max_compression_ratio``): skimming 4 MiB
                       of msgpack costs ms, so it must cost the sender more than ~150 bytes
 2. ``undecodable``    not zstd / not the ``[body, signature]`` msgpack wrapper / body not msgpack
 3. ``bad_version``    body's format version is not ``FORMAT_VERSION`` (peeked before the strict decode)
 4. ``schema``         strict typed decode (types, missing or unknown fields, sender not 32 bytes,
                       non-finite created_at, body not in canonical encoding)
 5. ``wrong_swarm``    swarm id differs
    ``schema``         limits: 1..max_completions completions, len(finished) == len(completions), logprobs
                       one list per completion, each text <= max_completion_chars, reward_claims empty or one
                       per completion, seq >= 0, model_id <= MAX_MODEL_ID_CHARS
 6. ``duplicate``      the same body (sha256) was already seen *and verified*: gossip/DHT re-deliveries are
                       dropped before paying for the signature check (the only state read before it; only
                       verified bodies are ever recorded)
    ``ignored_peer``   the claimed signer is ignored by the reputation: dropped before paying for the signature
                       check, the re-derivation and the re-scoring (a forgery naming an ignored peer is dropped
                       too, which costs that peer nothing: ignored_peer rejections are never charged)
 7. ``bad_signature``  Ed25519 over the exact body bytes with the key in ``sender``
 8. ``self``           our own envelope coming back
 9. ``sender_mismatch`` the transport names a sender and it is not the signer
10. ``stale``/``future`` created_at older than max_age_s / more than max_future_s ahead of our clock
11. ``replay``         (signer, seq) already seen with a different body (seq reuse)
12. ``rate_limited``   per-signer token bucket: rate_per_peer per minute, burst burst_per_peer
13. ``dataset_not_allowed`` (source, dataset) not in the node's allow-list
    ``config_not_allowed`` the dataset config is not one of this node's own (unless
                       ``admission.foreign_task_configs``): a peer cannot make us generate arbitrary variants
14. ``task_underivable`` the task reference cannot be regenerated (non-canonical config JSON included)
15. re-score: every completion is scored locally; the sender's ``reward_claims`` are never used as
    rewards. ``false_claims``: claims present and different from the local scores (unless
    ``admission.reject_false_claims`` is off): a lying (poisoning) or broken peer. Claims must be finite
    (``schema``; a NaN claim would otherwise compare as "not different").
Anything unexpected inside ``admit`` is caught and counted as ``internal_error`` (logged at WARNING).

Reputation (optional, ``swarm/reputation.py``): rejections are charged to the verified signer or to the
transport's authenticated sender by the rules in ``_SIGNER_CHARGES`` / ``_SENDER_CHARGES`` (never for what a
third party can cause by re-sending a genuine envelope: ``stale``, ``future``, ``duplicate``, ``wrong_swarm``
to the signer); an admitted group whose re-scored rewards are all equal charges its signer ``no_signal``, one
with a reward spread credits it.

Seen (signer, seq) and digests are recorded once an envelope has passed the signature and freshness checks,
whatever happens after, so re-deliveries of a rate-limited or underivable envelope stay cheap.

Threat model. Covered: malformed, oversized and compression-bomb payloads (bounded memory and CPU per
payload); forged or altered envelopes (signature over the canonical body; the signer is the origin, and it
must equal the transport's sender where the transport knows it); cross-swarm traffic; replays and duplicates
within the freshness window; clock-skew abuse (created_at must lie in [now - max_age_s, now + max_future_s]);
one identity flooding us (per-signer token bucket, spent only by authenticated, fresh, new envelopes);
reward lies (rewards always recomputed from the re-derived task); questions the receiver does not train on
(dataset allow-list). All state is bounded (constants below), so hostile traffic cannot grow memory.

Not covered: Sybils (identities are free; each new key gets a fresh rate budget, and many keys can flush the
bounded replay/digest caches, after which a still-fresh envelope could be admitted a second time; per-peer
caps in the pool and reputation are the mitigation, not admission); correct-but-useless or adversarially
chosen answers (e.g. a peer that only shares groups it selected, copies answers, or sends text crafted to
steer the receiver's policy while scoring well or badly; admission checks validity, not usefulness);
expensive-but-valid task configs when ``admission.foreign_task_configs`` is on (then the allow-list is per
dataset, not per config: a peer may pick difficulty knobs the receiver does not use, which costs generation
time in ``resolve``; off by default, only the node's own configs are accepted); eclipse attacks (a node whose
every neighbour is hostile sees only what they choose to relay; admission cannot detect missing traffic);
confidentiality (envelopes are public) and transport-level DoS (the transport must bound frame sizes and
connection counts before bytes reach admission).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable

from node.config import AdmissionConfig
from node.rollout import Completion, RolloutGroup
from node.tasks import Task, TaskRef, canonical_config, resolve, score
from swarm import envelope as wire
from swarm.identity import peer_id_from_public

log = logging.getLogger(__name__)

# Bounds of every cache (memory stays O(these) whatever peers send).
MAX_TRACKED_PEERS = 4096
"""Signers with a replay window and a rate bucket (least recently active evicted first)."""
SEQS_PER_PEER = 2048
"""Sequence numbers remembered per signer (oldest first out). At the default 64/min with max_age_s = 600 an
honest peer sends ~640 envelopes per freshness window, well inside this."""
MAX_DIGESTS = 65536
"""Body digests remembered for duplicate detection (LRU)."""
MAX_REMEMBERED_SEQS = 131072
"""(signer, seq) pairs remembered in all, oldest of the least recently active signer out first. Without it the
replay windows alone could grow to MAX_TRACKED_PEERS x SEQS_PER_PEER = 8.4 million entries (~2 GB); with it
they stay under ~40 MB (scripts/bench_flood.py)."""
MAX_MODEL_ID_CHARS = 256
RATIO_FREE_BYTES = 256 * 1024
"""Decompressed size allowed whatever the compression ratio (``admission.max_compression_ratio`` applies
beyond it): small envelopes of repetitive text compress far better than large ones."""

_SIGNER_CHARGES = {"schema": "invalid", "replay": "invalid", "task_underivable": "invalid",
                   "false_claims": "invalid", "rate_limited": "rate_limited"}
"""Rejections charged to the signer once its signature verified (none of these can be produced by a third
party re-sending one of the signer's genuine envelopes)."""
_SENDER_CHARGES = frozenset({"oversize", "undecodable", "schema", "wrong_swarm", "bad_signature",
                             "sender_mismatch"})
"""Rejections charged to the transport's sender (``Received.sender``, authenticated by the transport as the
author of what it delivered) when no verified signer was charged. Never charged to anyone: ``duplicate``,
``stale``, ``future`` (re-sending a genuine envelope late produces them), ``bad_version``,
``dataset_not_allowed``, ``config_not_allowed`` (honest peers on other versions or task mixes), ``self``,
``ignored_peer``, ``internal_error``."""


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "", peer: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.peer = peer
        """The signer, set only once its signature has verified."""


class Admission:
    def __init__(self, cfg: AdmissionConfig, swarm_id: str, own_peer_id: str,
                 allowed: set[tuple[str, str]], prompt_for: Callable[[Task], str],
                 clock: Callable[[], float] = time.time, own_configs: set[tuple[str, str, str]] | None = None,
                 reputation=None):
        """``own_configs``: (source, dataset, canonical config) of the node's own mix; unless
        ``cfg.foreign_task_configs``, only these configs are accepted (``config_not_allowed``).
        ``reputation``: a ``swarm.reputation.Reputation`` to charge and consult (``SwarmExchange`` sets it)."""
        self.cfg = cfg
        self.reputation = reputation
        self.own_configs = None if (own_configs is None or cfg.foreign_task_configs) else frozenset(own_configs)
        self.swarm_id = swarm_id
        self.own_peer_id = own_peer_id
        if cfg.allowed_datasets is not None:
            allowed = set()
            for name in cfg.allowed_datasets:
                source, sep, dataset = name.partition("/")
                if sep:
                    allowed.add((source, dataset))
                else:
                    log.warning("admission.allowed_datasets entry %r is not source/dataset; ignored", name)
        self.allowed = frozenset(allowed)
        self.prompt_for = prompt_for
        self.clock = clock
        self._lock = threading.Lock()
        self._admitted = 0
        self._rejected: Counter[str] = Counter()
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._seqs: OrderedDict[str, OrderedDict[int, bytes]] = OrderedDict()
        """signer -> {seq: body digest}"""
        self._n_seqs = 0
        """Entries in all of ``_seqs``."""
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        """signer -> [tokens, last refill time]"""

    # ----------------------------------------------------------------------------------------------------

    def admit(self, payload: bytes, transport_sender: str | None = None) -> RolloutGroup | None:
        """The admitted, re-derived and re-scored group, or None (rejection counted and logged). Never raises."""
        peer = transport_sender if isinstance(transport_sender, str) else "?"
        try:
            group, peer = self._admit(payload, transport_sender)
        except _Reject as rej:
            self._count(rej.reason)
            log.debug("rejected envelope from %s: %s (%s)", rej.peer or peer, rej.reason, rej.detail)
            if self.reputation is not None:
                self._charge(rej, transport_sender)
            return None
        except Exception as exc:  # hostile input must never crash the node
            self._count("internal_error")
            try:
                log.warning("admission internal error on an envelope from %s: %s: %s", peer,
                            type(exc).__name__, exc, exc_info=True)
            except Exception:
                pass
            return None
        with self._lock:
            self._admitted += 1
        return group

    def stats(self) -> dict:
        with self._lock:
            return {"admitted": self._admitted, "rejected": dict(self._rejected)}

    # ----------------------------------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def _charge(self, rej: _Reject, transport_sender) -> None:
        kind = _SIGNER_CHARGES.get(rej.reason)
        if kind is not None and rej.peer is not None:
            self.reputation.charge(rej.peer, kind)
        elif rej.reason in _SENDER_CHARGES and isinstance(transport_sender, str):
            self.reputation.charge(transport_sender, "invalid")

    def _admit(self, payload, transport_sender):
        cfg = self.cfg
        rep = self.reputation
        if rep is not None and isinstance(transport_sender, str) and rep.ignored(transport_sender):
            raise _Reject("ignored_peer", "the transport's sender is ignored (reputation)")
        try:
            body, signature = wire.unwrap(payload, cfg.max_envelope_bytes, self._decompressed_cap(payload))
        except wire.EnvelopeError as exc:
            raise _Reject(exc.reason, exc.detail) from None
        version = wire.peek_version(body)
        if version is not None and version != wire.FORMAT_VERSION:
            raise _Reject("bad_version", f"format version {version}, this node speaks {wire.FORMAT_VERSION}")
        try:
            env = wire.parse_body(body)
        except wire.EnvelopeError as exc:
            raise _Reject(exc.reason, exc.detail) from None
        if env.v != wire.FORMAT_VERSION:  # unreachable after the peek, kept as the authoritative check
            raise _Reject("bad_version", f"format version {env.v}")
        if env.swarm != self.swarm_id:
            raise _Reject("wrong_swarm", f"swarm {env.swarm[:64]!r}")
        try:
            self._check_limits(env)
        except _Reject as rej:
            # Without a transport sender to charge, charge the signer, but only if the signature holds.
            if rep is not None and transport_sender is None and wire.verify(env, body, signature):
                rej.peer = peer_id_from_public(env.sender)
            raise

        digest = hashlib.sha256(body).digest()
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                raise _Reject("duplicate", "body already seen")

        signer = peer_id_from_public(env.sender)  # claimed until the signature is checked
        if rep is not None and rep.ignored(signer):
            raise _Reject("ignored_peer", f"claimed signer {signer} is ignored (reputation)")
        if not wire.verify(env, body, signature):
            raise _Reject("bad_signature", "Ed25519 signature does not match sender and body")  # peer unknown
        if signer == self.own_peer_id:
            raise _Reject("self", "our own envelope", signer)
        if transport_sender is not None and transport_sender != signer:
            raise _Reject("sender_mismatch", f"signed by {signer}, delivered as from {transport_sender}"[:300],
                          signer)
        now = float(self.clock())
        if env.created_at < now - cfg.max_age_s:
            raise _Reject("stale", f"created {now - env.created_at:.1f} s ago > {cfg.max_age_s}", signer)
        if env.created_at > now + cfg.max_future_s:
            raise _Reject("future", f"created {env.created_at - now:.1f} s ahead > {cfg.max_future_s}", signer)

        with self._lock:
            seqs = self._seqs.get(signer)
            seen = None if seqs is None else seqs.get(env.seq)
            if digest in self._digests or seen == digest:  # a concurrent admit of the same body won the race
                raise _Reject("duplicate", "body already seen", signer)
            if seen is not None:
                raise _Reject("replay", f"seq {env.seq} already seen with another body", signer)
            self._remember(signer, env.seq, digest)
            if not self._take_token(signer, now):
                raise _Reject("rate_limited", f"over {cfg.rate_per_peer}/min (burst {cfg.burst_per_peer})", signer)

        t = env.task
        if (t.source, t.dataset) not in self.allowed:
            raise _Reject("dataset_not_allowed", f"{t.source}/{t.dataset}"[:200], signer)
        if self.own_configs is not None and (t.source, t.dataset, t.config) not in self.own_configs:
            raise _Reject("config_not_allowed", f"{t.dataset} {t.config}"[:200], signer)
        try:
            cfg_obj = json.loads(t.config)
            if not isinstance(cfg_obj, dict) or canonical_config(cfg_obj) != t.config:
                raise ValueError("task config is not canonical JSON of an object")
            task = resolve(TaskRef(t.source, t.dataset, t.config, t.seed, t.index))
        except Exception as exc:
            raise _Reject("task_underivable", f"{type(exc).__name__}: {exc}"[:300], signer) from None

        rewards = [float(score(task, text)) for text in env.completions]
        if cfg.reject_false_claims and env.reward_claims and any(
                abs(float(c) - r) > 1e-6 for c, r in zip(env.reward_claims, rewards)):
            raise _Reject("false_claims", f"claimed {list(env.reward_claims)[:8]} vs re-scored {rewards[:8]}", signer)
        group = RolloutGroup(
            task=task,
            prompt=self.prompt_for(task),
            completions=[Completion(text, token_ids=None, logprobs=None, finished=f)
                         for text, f in zip(env.completions, env.finished)],
            rewards=rewards,
            origin=signer,
            model_id=env.model_id,
        )
        if rep is not None:
            if group.has_signal:
                rep.credit(signer)
            else:
                rep.charge(signer, "no_signal")
        return group, signer

    def _decompressed_cap(self, payload) -> int:
        try:
            size = len(payload)
        except TypeError:
            return self.cfg.max_decompressed_bytes  # unwrap rejects it
        ratio_cap = max(RATIO_FREE_BYTES, int(self.cfg.max_compression_ratio * size))
        return min(self.cfg.max_decompressed_bytes, ratio_cap)

    def _check_limits(self, env: wire.Envelope) -> None:
        cfg = self.cfg
        n = len(env.completions)
        if not 1 <= n <= cfg.max_completions:
            raise _Reject("schema", f"{n} completions, allowed 1..{cfg.max_completions}")
        if len(env.finished) != n:
            raise _Reject("schema", f"{len(env.finished)} finished flags for {n} completions")
        if env.logprobs is not None and len(env.logprobs) != n:
            raise _Reject("schema", f"{len(env.logprobs)} logprob lists for {n} completions")
        if len(env.reward_claims) not in (0, n):
            raise _Reject("schema", f"{len(env.reward_claims)} reward claims for {n} completions")
        if not all(math.isfinite(c) for c in env.reward_claims):
            raise _Reject("schema", "a reward claim is not a finite number")
        for text in env.completions:
            if len(text) > cfg.max_completion_chars:
                raise _Reject("schema", f"completion of {len(text)} chars > {cfg.max_completion_chars}")
        if env.seq < 0:
            raise _Reject("schema", f"negative seq {env.seq}")
        if len(env.model_id) > MAX_MODEL_ID_CHARS:
            raise _Reject("schema", f"model_id of {len(env.model_id)} chars > {MAX_MODEL_ID_CHARS}")
        if not math.isfinite(env.created_at):
            raise _Reject("schema", "created_at is not finite")

    # State (called with self._lock held) ----------------------------------------------------------------

    def _remember(self, signer: str, seq: int, digest: bytes) -> None:
        self._digests[digest] = None
        while len(self._digests) > MAX_DIGESTS:
            self._digests.popitem(last=False)
        seqs = self._seqs.get(signer)
        if seqs is None:
            seqs = self._seqs[signer] = OrderedDict()
            while len(self._seqs) > MAX_TRACKED_PEERS:
                self._n_seqs -= len(self._seqs.popitem(last=False)[1])
        else:
            self._seqs.move_to_end(signer)
        seqs[seq] = digest  # seq is new for this signer (checked by the caller)
        self._n_seqs += 1
        while len(seqs) > SEQS_PER_PEER:
            seqs.popitem(last=False)
            self._n_seqs -= 1
        while self._n_seqs > MAX_REMEMBERED_SEQS:
            peer, oldest = next(iter(self._seqs.items()))
            oldest.popitem(last=False)
            self._n_seqs -= 1
            if not oldest:
                del self._seqs[peer]

    def _take_token(self, signer: str, now: float) -> bool:
        cfg = self.cfg
        bucket = self._buckets.get(signer)
        if bucket is None:
            bucket = self._buckets[signer] = [float(cfg.burst_per_peer), now]
            while len(self._buckets) > MAX_TRACKED_PEERS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(signer)
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(float(cfg.burst_per_peer), bucket[0] + elapsed * cfg.rate_per_peer / 60.0)
            bucket[1] = max(bucket[1], now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False
