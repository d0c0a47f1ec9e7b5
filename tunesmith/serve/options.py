"""What `tunesmith serve` is told: the limits that keep a bad request from hurting the server, batching, routes,
shadows.

Every bound has a default a laptop survives; each is checked here, once, so a mistake in a flag is one line.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError


@dataclass
class Route:
    """`NAME=A:0.9,B:0.1`: requests for NAME go to A or B by a stable hash of the request's user/request id."""

    name: str
    arms: list[tuple[str, float]]
    """(served model name, share), shares summing to 1."""

    def pick(self, key: str) -> str:
        """The arm for `key`: the same key always lands on the same arm (sha256, not Python's salted hash)."""
        digest = hashlib.sha256(f"{self.name}\0{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        total = 0.0
        for arm, share in self.arms:
            total += share
            if point < total:
                return arm
        return self.arms[-1][0]


def parse_route(spec: str) -> Route:
    """`NAME=A:0.9,B:0.1` (shares are normalised; `NAME=A,B` splits evenly)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"--route '{spec}': write NAME=MODEL_A:0.9,MODEL_B:0.1")
    arms = []
    for part in rest.split(","):
        model, _, share = part.partition(":")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            raise ConfigError(f"--route '{spec}': the share of '{model}' is not a number ('{share}')") from None
        if value <= 0 or not model.strip():
            raise ConfigError(f"--route '{spec}': each arm needs a model name and a share > 0")
        arms.append((model.strip(), value))
    if len({a for a, _ in arms}) != len(arms):
        raise ConfigError(f"--route '{spec}': an arm is named twice")
    total = sum(v for _, v in arms)
    return Route(name.strip(), [(a, v / total) for a, v in arms])


@dataclass(frozen=True)
class Shadow:
    """`PRIMARY=CANDIDATE`: what PRIMARY answers, CANDIDATE answers too, off the request path, into the log only."""

    primary: str
    candidate: str


def parse_shadow(spec: str) -> Shadow:
    """`PRIMARY=CANDIDATE`: two served model names."""
    primary, sep, candidate = (part.strip() for part in spec.partition("="))
    if not sep or not primary or not candidate or "=" in candidate or "," in candidate:
        raise ConfigError(f"--shadow '{spec}': write PRIMARY=CANDIDATE (two served model names)")
    return Shadow(primary, candidate)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    """Loopback by default: exposing a model to a network is a decision, not a default."""
    port: int = 8000
    max_batch: int = 32
    """Dynamic batching: most texts (classify) or prompts (generate) run in one forward pass."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join it."""
    queue_size: int = 256
    """Requests waiting per model; beyond it the server answers 503 with Retry-After (back-pressure)."""
    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    """Texts or images (classify) or prompts (generate) in one request."""
    max_text_chars: int = 20_000
    """Characters in one text, prompt or chat message list."""
    max_tokens: int = 512
    """The most new tokens a request may ask for (`max_tokens`)."""
    max_total_tokens: int = 4096
    """Prompt tokens + max_tokens per prompt."""
    timeout_s: float = 60.0
    """Per request, from arrival to answer (504 after it); also bounds reading a slow client's body."""
    read_timeout_s: float = 10.0
    """A client must have sent its request headers, and then its whole body, within this (slow clients get 408)."""
    api_keys: list[str] = field(default_factory=list)
    """When set, every endpoint but /healthz wants `Authorization: Bearer KEY` (or `X-API-Key`)."""
    routes: list[Route] = field(default_factory=list)
    shadows: list[Shadow] = field(default_factory=list)
    """Candidates answering their primary's traffic for the log only (the client gets the primary's answer)."""
    log: Path | None = None
    """The prediction log (JSONL, appended off the request path); None: no log."""
    log_rotate_bytes: int = 50_000_000
    log_keep: int = 5
    threads: int | None = None
    """torch's intra-op threads for the models (None: torch's default, one per core). On few cores, fewer
    threads leave room for the event loop and other processes (see docs/serving-benchmark.md)."""
    batching: bool = True
    """False: every request runs alone (the baseline the benchmark compares against)."""

    def __post_init__(self):
        for name in ("port", "max_batch", "queue_size", "max_body_bytes", "max_texts", "max_text_chars"):
            if int(getattr(self, name)) < (0 if name == "port" else 1):
                raise ConfigError(f"serve: {name.replace('_', '-')} must be a positive integer")
        for name in ("max_tokens", "max_total_tokens", "log_rotate_bytes", "log_keep"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"serve: {name.replace('_', '-')} must be a positive integer")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError("serve: threads must be a positive integer")
        if self.max_wait_ms < 0 or self.timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ConfigError("serve: max-wait-ms must be >= 0; timeout and read-timeout must be > 0")
        if self.log is not None:
            self.log = Path(self.log)

    def key_ok(self, given: str | None) -> bool:
        """Constant-time comparison against every key (no early exit that leaks which prefix matched)."""
        if not self.api_keys:
            return True
        ok = False
        for key in self.api_keys:
            ok |= hmac.compare_digest((given or "").encode(), key.encode())
        return ok


def read_api_keys(path: str | Path) -> list[str]:
    """One key per line; blank lines and `#` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--api-key-file '{path}' does not exist")
    keys = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ConfigError(f"--api-key-file '{path}' holds no key (one per line)")
    return keys
