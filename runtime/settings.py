"""Settings shared by the api, the workers and the ops command line.

Read once from the environment; every default points at the local stack that
`make run` starts, so nothing needs setting to work on a laptop. Secrets (the
database URL may hold a password) are never printed: see `Settings.redacted`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from queueing.shards import MAX_SHARDS, QueueLayout
from runtime.redis_client import RedisUrlError, check_url
from schema.record_checks import RecordLimits
from schema.records import RECORD_TYPES

MIB = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be <= {maximum}, got {value}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(name: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
    value = os.environ.get(name) or default
    if upper:
        value = value.upper()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _str(name: str, default: str) -> str:
    return os.environ.get(name) or default


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET_FIELDS = ("ops_token",)


def log_format() -> str:
    """LOG_FORMAT, checked: read on its own too, by the log setup that runs before the settings (runtime/logs.py)."""
    return _choice("LOG_FORMAT", "json", LOG_FORMATS)


def log_level() -> str:
    """LOG_LEVEL, checked (any case)."""
    return _choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True)


# The tables retention applies to: the nine record types, the push rows and the quarantine.
RETAINED_TABLES = (*RECORD_TYPES, "pushes", "quarantine")


@dataclass(frozen=True)
class Retention:
    """How long rows are kept (RETENTION_DAYS, RETENTION_DAYS_<TABLE>; 0 keeps them forever) and partition width.

    A partitioned table is split by its records' own time into PARTITION_DAYS-wide
    partitions, PARTITIONS_AHEAD of them made ahead of time (store/retention.py).
    """

    default_days: int = 90
    days: Mapping[str, int] = field(default_factory=dict)  # per-table overrides of default_days
    partition_days: int = 7
    partitions_ahead: int = 2

    def days_for(self, table: str) -> int:
        """Days a row of `table` is kept (0: forever)."""
        return self.days.get(table, self.default_days)

    @classmethod
    def from_env(cls) -> Retention:
        unknown = sorted(
            n for n in os.environ if n.startswith("RETENTION_DAYS_") and n[15:].lower() not in RETAINED_TABLES
        )
        if unknown:  # a misspelt table would otherwise keep its rows for the default, silently
            tables = ", ".join(t.upper() for t in RETAINED_TABLES)
            raise SettingsError(f"{', '.join(unknown)}: no such table (RETENTION_DAYS_<TABLE>, TABLE one of {tables})")
        days = {}
        for table in RETAINED_TABLES:
            name = f"RETENTION_DAYS_{table.upper()}"
            if os.environ.get(name):
                days[table] = _int(name, 0, 0, 36_500)
        return cls(
            default_days=_int("RETENTION_DAYS", 90, 0, 36_500),
            days=days,
            partition_days=_int("PARTITION_DAYS", 7, 1, 366),
            partitions_ahead=_int("PARTITIONS_AHEAD", 2, 1, 52),
        )


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, with its unit in the name."""

    database_url: str
    redis_url: str
    port: int
    queue_name: str
    queue_shards: int  # the queue is split in this many, by a hash of the workspace (queueing/shards.py)
    # Request limits.
    max_body_bytes: int  # decompressed size of one push
    max_compressed_body_bytes: int  # size on the wire
    # Past max_body_bytes a push is not read in memory: it streams to the spool and a worker splits it.
    max_push_bytes: int  # the hard cap (413 past it), decompressed; the gzip wire cap scales with it
    max_record_bytes: int  # a streamed push's record longer than this is quarantined verbatim, unread
    max_records_per_push: int
    max_string_chars: int  # longest string inside a record
    max_nesting_depth: int  # deepest nesting of objects and arrays inside a record
    body_read_timeout_s: float  # a client that takes longer to send its body gets 408
    # Queue and jobs.
    push_dedupe_ttl_s: int  # how long a push id is remembered for the 200 duplicate answer
    job_timeout_s: int  # longest one batch may take in a worker
    job_retries: int  # transient failures retried this many times...
    job_retry_backoff_s: tuple[int, ...]  # ...after these pauses (last one repeats)
    failed_ttl_s: int  # how long a failed batch stays in RQ's failed registry
    job_data_compression: str  # "lz4": queued batches compressed in Redis; "none": kept as sent
    worker_maintenance_interval_s: int  # how often a worker requeues abandoned batches
    worker_jobs_per_take: int  # a worker takes up to this many queued batches at once (RQ bookkeeping shared)
    # Per API key: a token bucket in Redis (429 past it). 0 disables the limit.
    rate_limit_pushes_per_s: float
    rate_limit_burst: int
    # Back-pressure absorbs: past this share of Redis's maxmemory, pushes go to the local spool (0: no check).
    # Queue depth and lag are alerts (deploy/alerts.yml), never a reason to refuse a push.
    redis_memory_high_pct: float
    # The api's local durable spool (SQLite, fsynced), for when Redis cannot take a push.
    spool_path: str
    spool_max_bytes: int  # past it a push Redis cannot take is refused (503); 0: no spool
    # Redis must keep queued batches: refuse to start unless it is durable and never evicts.
    redis_require_durable: bool
    # Acknowledged means replicated: after the enqueue, WAIT for this many replicas (0: no WAIT)
    # at most this long; fewer acks and the push goes to the spool instead.
    redis_min_replicas_ack: int
    redis_replicas_ack_timeout_ms: int
    # The address clients reach the api at (device enrollment links); empty: the request's own.
    public_base_url: str
    # Auth.
    key_cache_ttl_s: float  # a revoked key stops working within this bound (while Postgres is up)
    key_mirror_refresh_s: float  # how often one api copies every key hash into Redis (read while Postgres is down)
    # Requests one api process serves at once; past it, 503 with Retry-After (0: no bound).
    max_inflight_requests: int
    # The operator page GET /ops: its token (Bearer, or ?token= once to set a cookie); empty: the page is off (404).
    ops_token: str
    # Logs: one JSON object per line ("json") or plain lines ("text"), at this level.
    log_format: str
    log_level: str
    # A streaming replica for the read endpoints and the ops reports (empty: the primary serves them).
    database_read_url: str = ""
    # How long rows are kept, and how the big tables are partitioned by time (store/retention.py).
    retention: Retention = field(default_factory=Retention)

    @classmethod
    def from_env(cls) -> Settings:
        backoff = _str("JOB_RETRY_BACKOFF_S", "1,5,30,120,600")
        if not re.fullmatch(r"\d+(,\d+)*", backoff):
            raise SettingsError(f"JOB_RETRY_BACKOFF_S must be comma-separated seconds, got {backoff!r}")
        redis_url = _str("REDIS_URL", "redis://127.0.0.1:6379/0")
        try:
            check_url(redis_url)
        except RedisUrlError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            database_url=_str("DATABASE_URL", "postgresql://selftune@127.0.0.1:5432/selftune"),
            redis_url=redis_url,
            database_read_url=_str("DATABASE_READ_URL", ""),
            port=_int("PORT", 8000, 1),
            queue_name=_str("QUEUE_NAME", "ingest"),
            queue_shards=_int("QUEUE_SHARDS", 8, 1, MAX_SHARDS),
            max_body_bytes=_int("MAX_BODY_BYTES", 16 * MIB, 1024),
            max_compressed_body_bytes=_int("MAX_COMPRESSED_BODY_BYTES", 16 * MIB, 1024),
            max_push_bytes=_int("MAX_PUSH_BYTES", 256 * MIB, 1024),
            max_record_bytes=_int("MAX_RECORD_BYTES", 4 * MIB, 1024),
            max_records_per_push=_int("MAX_RECORDS_PER_PUSH", 10_000, 1),
            max_string_chars=_int("MAX_STRING_CHARS", 1_000_000, 1),
            max_nesting_depth=_int("MAX_NESTING_DEPTH", 32, 2),
            body_read_timeout_s=_float("BODY_READ_TIMEOUT_S", 30.0, 0.1),
            push_dedupe_ttl_s=_int("PUSH_DEDUPE_TTL_S", 7 * 24 * 3600, 1),
            job_timeout_s=_int("JOB_TIMEOUT_S", 120, 1),
            job_retries=_int("JOB_RETRIES", 5),
            job_retry_backoff_s=tuple(int(s) for s in backoff.split(",")),
            failed_ttl_s=_int("FAILED_TTL_S", 30 * 24 * 3600, 1),
            job_data_compression=_choice("JOB_DATA_COMPRESSION", "lz4", ("lz4", "none")),
            worker_maintenance_interval_s=_int("WORKER_MAINTENANCE_INTERVAL_S", 10, 1),
            worker_jobs_per_take=_int("WORKER_JOBS_PER_TAKE", 8, 1, 100),
            rate_limit_pushes_per_s=_float("RATE_LIMIT_PUSHES_PER_S", 10.0),
            rate_limit_burst=_int("RATE_LIMIT_BURST", 60, 1),
            redis_memory_high_pct=_float("REDIS_MEMORY_HIGH_PCT", 80.0),
            spool_path=_str("SPOOL_PATH", ".data/spool/api-spool.sqlite3"),
            spool_max_bytes=_int("SPOOL_MAX_BYTES", 2048 * MIB),
            redis_require_durable=_bool("REDIS_REQUIRE_DURABLE", False),
            redis_min_replicas_ack=_int("REDIS_MIN_REPLICAS_ACK", 0, 0, 16),
            redis_replicas_ack_timeout_ms=_int("REDIS_REPLICAS_ACK_TIMEOUT_MS", 500, 1, 60_000),
            public_base_url=os.environ.get("PUBLIC_BASE_URL", ""),
            key_cache_ttl_s=_float("KEY_CACHE_TTL_S", 30.0),
            key_mirror_refresh_s=_float("KEY_MIRROR_REFRESH_S", 60.0, 1.0),
            max_inflight_requests=_int("MAX_INFLIGHT_REQUESTS", 1000),
            ops_token=os.environ.get("OPS_TOKEN", ""),
            log_format=log_format(),
            log_level=log_level(),
            retention=Retention.from_env(),
        )

    @property
    def queues(self) -> QueueLayout:
        """The ingest queue's shards: which queue a workspace's batches go to, which ones workers take from."""
        return QueueLayout(self.queue_name, self.queue_shards)

    @property
    def retry_pauses_s(self) -> list[int]:
        """One pause per retry: JOB_RETRY_BACKOFF_S in order, its last repeated, cut at JOB_RETRIES.

        RQ takes pause `len(intervals) - retries_left` of a job's list, so only a list
        exactly as long as the retries gives the pauses in the documented order.
        """
        listed = self.job_retry_backoff_s or (0,)
        return [listed[min(i, len(listed) - 1)] for i in range(self.job_retries)]

    @property
    def max_compressed_push_bytes(self) -> int:
        """The wire cap of a gzip push: MAX_COMPRESSED_BODY_BYTES scaled as MAX_PUSH_BYTES scales MAX_BODY_BYTES."""
        return max(
            self.max_compressed_body_bytes, self.max_compressed_body_bytes * self.max_push_bytes // self.max_body_bytes
        )

    @property
    def record_limits(self) -> RecordLimits:
        return RecordLimits(self.max_string_chars, self.max_nesting_depth, self.max_records_per_push)

    def redacted(self) -> dict[str, object]:
        """The settings as a dict, with passwords in URLs masked (for logs)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", value)  # redis://:password@host too
            out[f.name] = value
        return out
