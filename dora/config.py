"""Frozen, typed configuration, loaded once from a TOML file and the environment.

Precedence: defaults < ``<data_dir>/dora.toml`` (or ``--config``) < ``DORA_*``
environment variables < explicit overrides (command-line flags). Each setting
of :class:`Settings` and of :class:`Limits` maps to ``DORA_<NAME>`` (upper
case), for example ``DORA_RESULT_CACHE_BYTES=0`` turns the result cache off.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from dora.errors import BadRequest

T = TypeVar("T")

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Every bound the platform enforces; each breach is a precise 4xx."""

    max_upload_bytes: int = 1024 * MiB
    max_source_bytes: int = 20 * MiB  # synchronous processing source
    max_source_side: int = 30000
    max_source_pixels: int = 150_000_000
    max_output_side: int = 9999
    max_output_pixels: int = 25_000_000
    max_frames: int = 500
    op_timeout: float = 30.0  # seconds per synchronous call
    max_key_bytes: int = 750
    max_inflight_per_worker: int = 64
    max_rpc_frame_bytes: int = 64 * MiB
    job_timeout: float = 3600.0  # seconds for one asynchronous job item (transcodes)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Settings of one ``dora serve`` (and of the processes it starts)."""

    data_dir: Path = Path("./dora-data")
    host: str = "127.0.0.1"
    port: int = 9000
    workers: int = 0  # builtin worker processes; 0 means one per core
    gateways: int = 1  # gateway processes sharing the port
    result_cache_bytes: int = 256 * MiB
    source_cache_bytes: int = 128 * MiB
    registry_host: str = "127.0.0.1"
    registry_port: int = 0  # 0: the embedded registry picks a free port
    registry_external: bool = False  # True: talk to a real Consul agent, run none
    datacenter: str = "dc1"
    # "domain=bucket,domain2=bucket2": bucket domains for ``GET /key?fops``
    bucket_domains: str = ""
    cache_max_age: int = 31536000  # Cache-Control max-age on processed results
    # Hosts whose watermark images may be fetched ("host,*.example.com"); own
    # buckets (dora://bucket/key, own host, bucket domains) are always allowed.
    watermark_url_allow: str = ""
    # CIDRs exempt from the SSRF guard (notify URLs, fetched marks), e.g. "127.0.0.1/32".
    ssrf_allow: str = ""
    job_lease_seconds: float = 15.0  # a job's lease; renewed while it runs, re-leased if it dies
    shutdown_grace: float = 10.0
    limits: Limits = dataclasses.field(default_factory=Limits)

    def bucket_domain_map(self) -> dict[str, str]:
        """Parse :attr:`bucket_domains` into ``{host: bucket}``."""
        out: dict[str, str] = {}
        for raw in self.bucket_domains.split(","):
            item = raw.strip()
            if not item:
                continue
            host, sep, bucket = item.partition("=")
            if not sep or not host or not bucket:
                raise BadRequest(f"bucket_domains: expected host=bucket, got {item!r}")
            out[host.strip().lower()] = bucket.strip()
        return out

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"config {name}: cannot read {raw!r} as {kind.__name__}") from exc


def _build(cls: type[T], sources: list[Mapping[str, Any]], prefix: str) -> T:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            nested = [s.get(field.name, {}) for s in sources]
            values[field.name] = _build(kind, [n for n in nested if isinstance(n, Mapping)], prefix)  # type: ignore[arg-type]
            continue
        for source in sources:
            if field.name in source:
                values[field.name] = _coerce(field.name, kind, source[field.name])
    return cls(**values)


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Load :class:`Settings` from defaults, a TOML file, ``DORA_*`` and overrides.

    Limits may be given flat in the environment (``DORA_MAX_SOURCE_BYTES``) or
    in a ``[limits]`` table of the file.
    """
    env = os.environ if env is None else env
    env_values: dict[str, Any] = {}
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    env_limits: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("DORA_"):
            continue
        name = key[5:].lower()
        if name in limit_names:
            env_limits[name] = value
        else:
            env_values[name] = value
    env_values["limits"] = env_limits

    clean_overrides = {k: v for k, v in overrides.items() if v is not None}
    data_dir = Path(clean_overrides.get("data_dir") or env_values.get("data_dir") or "./dora-data")
    if config_file is None:
        candidate = data_dir / "dora.toml"
        config_file = candidate if candidate.is_file() else None
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadRequest(f"config file {config_file}: {exc}") from exc
    return _build(Settings, [file_values, env_values, clean_overrides], "DORA_")
