"""The node's one configuration schema.

Precedence: schema defaults < YAML file (``--config``) < CLI overrides (``--set dotted.key=value``,
``--rounds``). The schema defaults *are* the offline CPU default, spelled out in ``configs/local.yaml``
(a test keeps the two equal), so ``sapo run`` with no arguments runs the embedded tiny model.

Every section rejects unknown keys, and every error names the field and how to fix it. This module
imports neither torch nor transformers, so ``sapo --help`` and config errors answer fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EMBEDDED_PREFIX = "embedded:"


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which field and what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class LoraConfig(Section):
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get adapters."""


class ModelConfig(Section):
    name: str = "embedded:tiny"
    """A Hugging Face model id or local path (e.g. Qwen/Qwen2.5-0.5B-Instruct), or ``embedded:tiny`` /
    ``embedded:small``: a small model built locally from a transformers config, no download."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub models."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype. ``auto`` keeps float32 master weights (compute runs in bf16 on CUDA, see
    ``train.precision``); pure bfloat16 weights save memory but round away small RL updates."""
    warm_start_steps: int = Field(200, ge=0)
    """Embedded models only: supervised steps on the default task mix before RL (0 = random weights)."""
    lora: LoraConfig = LoraConfig()

    @property
    def embedded(self) -> bool:
        return self.name.startswith(EMBEDDED_PREFIX)


class TaskSpec(Section):
    source: Literal["reasoning_gym"] = "reasoning_gym"
    """Where questions come from; every source regenerates a task from (dataset, config, seed, index)."""
    dataset: str
    """Dataset name within the source, e.g. basic_arithmetic."""
    config: dict[str, Any] = {}
    """Keyword arguments of the dataset generator (difficulty knobs). ``seed`` and ``size`` are not allowed
    here: the seed comes from ``tasks.seed`` and the index from the round."""
    weight: float = Field(1.0, gt=0)
    """Relative sampling weight in the mix."""

    @model_validator(mode="after")
    def _no_seed_or_size(self) -> "TaskSpec":
        bad = {"seed", "size"} & set(self.config)
        if bad:
            raise ValueError(
                f"tasks.mix[].config must not set {sorted(bad)}: the seed comes from tasks.seed and the "
                "index from the round counter; remove these keys"
            )
        try:
            json.dumps(self.config, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"tasks.mix[].config must be plain YAML data (numbers, strings, lists): {exc}")
        return self


def _default_mix() -> list[TaskSpec]:
    # One-digit addition/subtraction: learnable by the embedded tiny model on a CPU in minutes.
    # (With two-digit operands the 0.4 M-parameter model stays near 6% however long RL runs.)
    return [
        TaskSpec(
            dataset="basic_arithmetic",
            config={
                "min_terms": 2,
                "max_terms": 2,
                "min_digits": 1,
                "max_digits": 1,
                "operators": ["+", "-"],
                "allow_parentheses": False,
                "allow_negation": False,
            },
        )
    ]


class TasksConfig(Section):
    mix: list[TaskSpec] = Field(default_factory=_default_mix, min_length=1)
    """Datasets this node trains on, sampled by weight each round."""
    seed: int | None = None
    """Seed of the question streams; ``None`` uses ``seed`` (the node seed)."""
    system_prompt: str = (
        "Solve the problem. Think briefly, then give only the final answer inside <answer></answer> tags."
    )
    """Used with tokenizers that have a chat template; the embedded tokenizer uses a bare prompt."""


class VllmConfig(Section):
    gpu_memory_utilization: float = Field(0.35, gt=0, le=0.95)
    """Fraction of GPU memory the colocated vLLM engine may take (weights + KV cache); the trainer uses the
    rest. Lower it when the trainer runs out of memory."""
    enable_sleep_mode: bool = True
    """Let the engine sleep (free its KV cache and weights) while the trainer steps, in ``runtime.mode: sync``."""
    enforce_eager: bool = False
    """Disable vLLM's CUDA graphs (slower decoding, faster start, less memory)."""
    max_model_len: int | None = Field(None, ge=16)
    """Context length of the engine; ``None`` = max_prompt_tokens + max_new_tokens."""


class GenerationConfig(Section):
    backend: Literal["hf", "fast", "vllm"] = "hf"
    """Generator backend: ``hf`` (transformers forward passes, dynamic KV cache: any device); ``fast``
    (static KV cache, decode step captured in a CUDA graph, sampling on device; on a CPU it runs the same
    static-cache loop without graphs); ``vllm`` (colocated vLLM engine, GPU only, needs
    ``pip install 'sapo-swarm[vllm]'``)."""
    group_size: int = Field(8, ge=2)
    """G: completions sampled per question (GRPO needs at least 2 to compare)."""
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int = Field(0, ge=0)
    """0 disables top-k."""
    batch_size: int = Field(64, ge=1)
    """Sequences per generate call."""
    max_prompt_tokens: int = Field(1024, ge=8)
    """Longer prompts are truncated from the left."""
    cuda_graphs: bool = True
    """``fast`` backend: capture the decode step in a CUDA graph (CUDA only; ignored on a CPU)."""
    vllm: VllmConfig = VllmConfig()


class TrainConfig(Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(1.0, gt=0)
    eps_low: float = Field(0.2, ge=0, lt=1)
    """Lower clip of the ratio: 1 - eps_low."""
    eps_high: float = Field(0.28, ge=0)
    """Upper clip of the ratio: 1 + eps_high (clip-higher, DAPO)."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of a k3 KL penalty to the initial policy; 0 (default) keeps no reference model."""
    scale_rewards: bool = True
    """Divide group-centred rewards by the group std (GRPO); False keeps only centring (Dr. GRPO)."""
    micro_batch_size: int = Field(16, ge=1)
    """Sequences per forward/backward; gradients accumulate over the whole batch (one optimizer step per pass)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision of forward passes (generation and training): ``auto`` = bf16 autocast on CUDA,
    fp32 on CPU."""
    epochs_per_round: int = Field(1, ge=1)
    """Optimizer passes over a round's batch; with more than 1 the clipped ratio starts to bind."""
    off_policy: Literal["tis", "mask", "none"] = "tis"
    """Correction for the gap between the policy that sampled a local completion (behaviour logprobs
    recorded by the generator: an older policy in ``runtime.mode: async``, or another numeric precision /
    engine) and pi_old (the trainer's own forward pass). ``tis``: weight each token's loss by
    ``min(pi_old / pi_behaviour, tis_cap)`` (truncated importance sampling); ``mask``: drop tokens whose
    ratio leaves ``mask_band``; ``none``: ignore the gap. External groups carry no behaviour logprobs and
    get weight 1 (the SAPO treatment: pi_old is the receiver's own policy)."""
    tis_cap: float = Field(2.0, ge=1.0)
    """C in ``min(pi_old / pi_behaviour, C)``."""
    mask_band: tuple[float, float] = (0.5, 2.0)
    """``off_policy: mask`` keeps a token when ``low <= pi_old / pi_behaviour <= high``."""

    @model_validator(mode="after")
    def _band_order(self) -> "TrainConfig":
        low, high = self.mask_band
        if not 0 < low <= 1.0 <= high:
            raise ValueError(f"train.mask_band must satisfy 0 < low <= 1 <= high, got {list(self.mask_band)}; "
                             "e.g. [0.5, 2.0]")
        return self


class SapoConfig(Section):
    local_groups: int = Field(4, ge=0)
    """I: the node's own rollout groups per training batch."""
    external_groups: int = Field(4, ge=0)
    """J: groups sampled from peers per training batch (topped up from local groups when too few arrive)."""
    external_advantages: Literal["all", "positive"] = "all"
    """``positive``: learn only from peers' better-than-average completions (negative advantages of
    external groups are zeroed); ``all``: plain GRPO on external groups too."""

    @model_validator(mode="after")
    def _non_empty(self) -> "SapoConfig":
        if self.local_groups + self.external_groups < 1:
            raise ValueError("sapo.local_groups + sapo.external_groups must be at least 1; set local_groups: 8")
        return self


class HivemindTransportConfig(Section):
    type: Literal["hivemind"] = "hivemind"
    listen: list[str] = ["/ip4/127.0.0.1/tcp/0"]
    """Multiaddrs to listen on (port 0 = any free port). To accept peers from other machines use e.g.
    ``/ip4/0.0.0.0/tcp/31337`` and open that port."""
    announce: list[str] = []
    """Multiaddrs to advertise instead of the listen addresses (e.g. a public IP behind port forwarding)."""
    window_s: float = Field(10.0, gt=0)
    """Records live under a DHT key per (swarm, time window of this many seconds)."""
    poll_interval_s: float = Field(0.2, gt=0)
    """Fastest poll of the DHT for new records; backs off while nothing new arrives."""
    max_poll_interval_s: float = Field(2.0, gt=0)
    record_ttl_s: float = Field(120.0, gt=0)
    """Expiration of published records (the publisher keeps bodies this long for peers to fetch)."""
    push_hints: bool = True
    """Also push each signed index entry straight to known peers (low latency); off: DHT polling only."""
    inline_max_bytes: int = Field(65_536, ge=0, le=1_048_576)
    """Bodies up to this size ride inside the pushed hint; larger ones are fetched from the publisher."""


class RelayConfig(Section):
    enabled: bool = False
    """Reach and be reached through libp2p circuit relay v2 (for nodes behind NAT): reserve a slot on the relays,
    advertise ``<relay>/p2p-circuit/p2p/<me>``, dial peers through their relay when their direct addresses fail."""
    relays: list[str] = []
    """Relay multiaddrs to reserve a slot on (e.g. a `sapo bootstrap --transport libp2p --relay`); empty = the
    initial peers that accept a reservation. With ``enabled``, none accepting stops the node with an error."""
    hop: bool = False
    """Act as a relay for others (what `sapo bootstrap --relay` turns on)."""
    hole_punch: bool = True
    """With ``enabled``: upgrade each relayed connection to a direct one where the NATs allow it (DCUtR: both
    sides dial each other from their listen port at once, a TCP simultaneous open that port-preserving NATs let
    through); the relayed connection is closed 60 s after the direct one works. Peers stay relayed when it fails
    (e.g. behind NATs that change the source port)."""


class Libp2pTransportConfig(Section):
    type: Literal["libp2p"] = "libp2p"
    listen: list[str] = ["/ip4/127.0.0.1/tcp/0"]
    """Multiaddrs to listen on (port 0 = any free port); QUIC (``/ip4/0.0.0.0/udp/N/quic-v1``) alone or beside TCP."""
    announce: list[str] = []
    mdns: bool = True
    """Find peers on the local network / machine with mDNS (zero-configuration local swarms)."""
    dht: bool = True
    """Discover peers beyond the bootstrap list with a Kademlia DHT / random walk."""
    max_frame_bytes: int = Field(60_000, ge=1024, le=60_000)
    """Largest gossip frame sent; py-libp2p 0.8.1 receivers crash on frames above ~64 KB, so bigger bodies are
    chunked or fetched over a stream."""
    heartbeat_s: float = Field(1.0, gt=0)
    """Gossipsub heartbeat interval."""
    relay: RelayConfig = RelayConfig()


TransportConfig = Annotated[HivemindTransportConfig | Libp2pTransportConfig, Field(discriminator="type")]


class AdmissionConfig(Section):
    max_envelope_bytes: int = Field(1_048_576, ge=1024)
    """Largest compressed envelope accepted."""
    max_decompressed_bytes: int = Field(4_194_304, ge=1024)
    """Largest envelope after decompression (guards against compression bombs)."""
    max_compression_ratio: float = Field(256.0, ge=1)
    """Beyond the first 256 KiB, a payload may decompress to at most this many times its compressed size: a
    ~150-byte payload that expands to 4 MiB of msgpack costs ms of decoding, one of honest text ~1 KiB."""
    max_age_s: float = Field(600.0, gt=0)
    """Envelopes created longer ago than this are stale."""
    max_future_s: float = Field(30.0, ge=0)
    """Tolerated clock skew: envelopes dated further in the future are rejected."""
    rate_per_peer: float = Field(480.0, gt=0)
    """Envelopes per peer per minute (token bucket) before rate limiting kicks in; twice what an honest
    node publishes at most (``swarm.publish_per_minute``)."""
    burst_per_peer: int = Field(120, ge=1)
    max_completions: int = Field(64, ge=1)
    max_completion_chars: int = Field(16_384, ge=1)
    allowed_datasets: list[str] | None = None
    """``source/dataset`` names accepted from peers; ``None`` = the datasets of this node's own task mix."""
    reject_false_claims: bool = True
    """Reject a group whose sender's reward claims differ from this node's own re-scoring (a lying or
    broken peer; honest peers run the same verifier). Off: claims are ignored either way."""
    foreign_task_configs: bool = False
    """Accept dataset configs (difficulty knobs) that differ from this node's own mix entries. Off: a peer
    cannot make this node generate arbitrary, possibly very expensive dataset variants."""


class PoolConfig(Section):
    ttl_s: float = Field(300.0, gt=0)
    """External groups older than this (since admission) are dropped from the pool."""
    max_groups: int = Field(4096, ge=1)
    max_per_peer: int = Field(512, ge=1)
    max_text_bytes: int = Field(268_435_456, ge=1)
    """Memory the pooled groups' texts may take (oldest evicted first): a valid group can hold up to
    ``admission.max_completions`` x ``max_completion_chars`` characters (~4 MiB), so ``max_groups`` alone
    would allow ~16 GiB."""
    per_peer_per_batch: int = Field(2, ge=1)
    """At most this many groups of one peer in one training batch."""
    reuse: bool = False
    """Whether a group may be trained on again in a later round."""


class ReputationConfig(Section):
    enabled: bool = True
    """Track a decaying penalty per peer (swarm/reputation.py): penalised peers are sampled less, and a peer
    over ``ignore_at`` has its envelopes dropped before the signature check and re-scoring."""
    half_life_s: float = Field(600.0, gt=0)
    """A peer's penalty halves every this many seconds, so a peer that stops misbehaving recovers."""
    invalid_penalty: float = Field(1.0, ge=0)
    """Added per envelope that fails admission and is attributable to the peer (signed by it, or authored
    by it according to the transport)."""
    no_signal_penalty: float = Field(1.0, ge=0)
    """Added per admitted group whose rewards, re-scored by this node, are all equal (e.g. all 0): honest
    peers only publish groups with a reward spread under the same verifier."""
    rate_limited_penalty: float = Field(0.25, ge=0)
    """Added per envelope over the peer's rate limit (honest nodes pace at half of it)."""
    useful_credit: float = Field(0.5, ge=0)
    """Subtracted (down to 0) per admitted group with a reward spread."""
    halving_penalty: float = Field(4.0, gt=0)
    """Each this much penalty halves the peer's sampling weight."""
    ignore_at: float = Field(16.0, gt=0)
    """From this penalty on, the peer is ignored (its envelopes are dropped as ``ignored_peer``)."""


class SwarmConfig(Section):
    enabled: bool = True
    """Share rollouts with peers. With no ``initial_peers`` the node is the first of a new swarm."""
    swarm_id: str = Field("sapo-local", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """Nodes only exchange rollouts within the same swarm id."""
    initial_peers: list[str] = []
    """Bootstrap multiaddrs (``/ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...``); same as ``--peers``."""
    identity_path: str | None = None
    """Ed25519 key file (created with mode 0600 on first run); ``None`` = ``RUN_DIR/identity.key``."""
    publish_per_minute: float = Field(240.0, gt=0)
    """At most this many groups published per minute (token bucket): a fast node (a tiny model on a CPU
    runs 10 rounds/s) shares a subset instead of tripping its peers' rate limits."""
    publish_burst: int = Field(60, ge=1)
    transport: TransportConfig = HivemindTransportConfig()
    admission: AdmissionConfig = AdmissionConfig()
    pool: PoolConfig = PoolConfig()
    reputation: ReputationConfig = ReputationConfig()


class CheckpointConfig(Section):
    every_rounds: int = Field(10, ge=1)
    """Save every N rounds (and always on SIGINT/SIGTERM and at the end)."""
    keep: int = Field(2, ge=1)
    """How many checkpoints to keep under RUN_DIR/checkpoints/."""


class MetricsConfig(Section):
    log_every: int = Field(1, ge=1)
    """Print a progress line every N rounds (metrics.jsonl always gets every round)."""
    port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0 = any free port, written to node.json); ``None`` = off."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint binds to; 0.0.0.0 exposes it to the network."""


class LoggingConfig(Section):
    format: Literal["text", "json"] = "text"
    """``text``: human-readable (rich); ``json``: one JSON object per line with peer id and round."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str | None = None
    """Also append log lines to this file (``None``: console only)."""


class AdversaryConfig(Section):
    role: Literal["none", "poisoner", "forger", "replayer", "flooder", "garbage"] = "none"
    """Test-only hostile behaviour for the simulation harness (swarm/sim/adversary.py). ``none`` for real
    nodes. poisoner: wrong completions claiming reward 1.0; forger: envelopes signed with the wrong key /
    claiming another peer's key; replayer: re-sends peers' envelopes; flooder: ``flood_factor`` x the normal
    rate; garbage: random and oversize payloads."""
    flood_factor: int = Field(10, ge=1)


class RuntimeConfig(Section):
    mode: Literal["sync", "async"] = "sync"
    """``sync``: generate, reward, train in turn. ``async``: a generator thread produces rounds into a
    bounded buffer while the trainer consumes them; each round is tagged with the policy version that
    sampled it (metrics ``staleness``), and the off-policy gap is corrected per ``train.off_policy``."""
    max_staleness: int = Field(1, ge=0)
    """``async``: at most this many trainer steps between the policy that generated a round and the step
    that trains on it; the generator waits rather than exceed it. 0 makes ``async`` compute exactly what
    ``sync`` computes (with no overlap)."""
    weight_sync_every: int = Field(1, ge=1)
    """``async``: the generator takes the trainer's weights (an in-place copy, no reload) once they are
    this many steps newer than its own, and always when the staleness bound needs it."""
    buffer_rounds: int = Field(2, ge=1)
    """``async``: rounds the generator may have finished and queued ahead of the trainer."""
    generator_threads: int | None = Field(None, ge=1)
    """``async`` on a CPU: torch threads of the generator thread; the trainer gets the rest of ``threads``.
    ``None`` = half of them (at least 1)."""


class Config(Section):
    seed: int = 0
    """Node seed: model init/warm start stay fixed; sampling and question streams derive from it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; ``None`` uses all cores."""
    rounds: int | None = Field(None, ge=1)
    """Stop after this round (counted from the start of the run, so a resumed run stops at the same
    place); ``None`` trains until stopped."""
    model: ModelConfig = ModelConfig()
    tasks: TasksConfig = TasksConfig()
    generation: GenerationConfig = GenerationConfig()
    train: TrainConfig = TrainConfig()
    sapo: SapoConfig = SapoConfig()
    swarm: SwarmConfig = SwarmConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    adversary: AdversaryConfig = AdversaryConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, data: Any) -> Any:
        # `model: Qwen/Qwen2.5-0.5B-Instruct` is short for `model: {name: ...}`.
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data = {**data, "model": {"name": data["model"]}}
        return data

    @property
    def task_seed(self) -> int:
        return self.seed if self.tasks.seed is None else self.tasks.seed


# ---------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def _format_validation_error(exc: ValidationError, origin: str, root: type[BaseModel] | None = None) -> str:
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        loc = _loc(err["loc"]) or "<top level>"
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _loc(err["loc"][:-1])
            known = _known_keys(err["loc"][:-1], root or Config)
            hint = f"remove it, or use one of: {', '.join(known)}" if known else "remove it"
            lines.append(f"  {loc}: unknown key{' in ' + parent if parent else ''}; {hint}")
            continue
        msg = err["msg"]
        got = err.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{got_s}")
    return "\n".join(lines)


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _known_keys(path: tuple, root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            model = args[0]
        else:
            return []
    return sorted(getattr(model, "model_fields", {}))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif isinstance(nxt, str) and part == "model":
            nxt = node[part] = {"name": nxt}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section; set '{part}' itself")
        node = nxt
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> (``a.b``, value parsed as YAML so numbers, booleans and lists get their types)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key; expected dotted.key=value, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                extra: dict[str, Any] | None = None) -> Config:
    """Build the config: defaults < file < ``overrides`` (``dotted.key=value``) < ``extra`` (dotted keys)."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}; pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (model:, train:, ...), "
                              f"not a {type(loaded).__name__}")
        data = loaded
    file_transport = _transport_type(data)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        origin += f" + --set {key}"
    for key, value in (extra or {}).items():
        _set_dotted(data, key, value)
    _prune_switched_transport(data, file_transport)
    transport = (data.get("swarm") or {}).get("transport") if isinstance(data.get("swarm"), dict) else None
    if isinstance(transport, dict) and "type" not in transport:
        transport["type"] = "hivemind"  # the default backend, so `--set swarm.transport.listen=...` just works
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None


def _transport_type(data: dict) -> str | None:
    t = (data.get("swarm") or {}).get("transport") if isinstance(data.get("swarm"), dict) else None
    return t.get("type", "hivemind") if isinstance(t, dict) else None


def _prune_switched_transport(data: dict, file_type: str | None) -> None:
    """``--transport libp2p`` on a file configured for hivemind: drop the settings the new backend lacks
    (each backend has its own), instead of failing on them as unknown keys."""
    new_type = _transport_type(data)
    if file_type is None or new_type == file_type:
        return
    models = {"hivemind": HivemindTransportConfig, "libp2p": Libp2pTransportConfig}
    target = models.get(new_type)
    if target is not None:
        t = data["swarm"]["transport"]
        data["swarm"]["transport"] = {k: v for k, v in t.items() if k in target.model_fields}


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
