"""Pseudonyms for participant ids and file paths in everything raybrain writes.

A keyed hash (HMAC-SHA256) whose key lives outside the tracking store: in the file named
by ``RAYBRAIN_PSEUDONYM_KEY_FILE`` (default ``~/.raybrain/pseudonym.key``, created with
mode 0600 on first use). The same id always maps to the same pseudonym for a key holder;
someone who only sees MLflow cannot invert it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path


def key_file() -> Path:
    return Path(os.environ.get("RAYBRAIN_PSEUDONYM_KEY_FILE", "~/.raybrain/pseudonym.key")).expanduser()


def _key() -> bytes:
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def pseudonym(value: str, prefix: str = "p") -> str:
    """``prefix-<12 hex>``: a stable keyed pseudonym of ``value``."""
    return f"{prefix}-{hmac.new(_key(), value.encode(), sha256).hexdigest()[:12]}"
