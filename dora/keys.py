"""The access keys of one Dora installation, kept in its data directory.

``dora serve`` creates a key pair on first run (``<data_dir>/keys.json``,
mode 0600) and ``dora keys`` prints it. Further pairs may be added to the
same file; every pair in it is accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dora.auth import Credentials, KeyRing, generate_credentials
from dora.errors import DoraError

KEYS_FILE = "keys.json"


def keys_path(data_dir: Path) -> Path:
    return data_dir / KEYS_FILE


def load_keys(data_dir: Path) -> list[Credentials]:
    """The key pairs stored in ``data_dir``; empty when there are none yet."""
    path = keys_path(data_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise DoraError(f"cannot read {path}: {exc}") from exc
    pairs = raw.get("keys", []) if isinstance(raw, dict) else []
    return [Credentials(str(p["access_key"]), str(p["secret_key"])) for p in pairs]


def ensure_keys(data_dir: Path) -> Credentials:
    """The first key pair, created (atomically, mode 0600) when there is none."""
    existing = load_keys(data_dir)
    if existing:
        return existing[0]
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = generate_credentials()
    body = {"keys": [{"access_key": creds.access_key, "secret_key": creds.secret_key}]}
    tmp = keys_path(data_dir).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, keys_path(data_dir))  # fails if another process won the race
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return load_keys(data_dir)[0]


def keyring_for(data_dir: Path) -> KeyRing:
    return KeyRing({c.access_key: c.secret_key for c in load_keys(data_dir)})
