"""Where the source API listens, keeps its records and which key it takes.

Without `FPR_API_KEY`, the API and `finmatch sync` share a key generated on first use and
kept in `<home>/fpr_api.key` (readable by its owner only), so both work with nothing set.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.settings import project_home

DEFAULT_PORT = 8100


def key_file() -> Path:
    """Return the file holding the locally generated key."""
    return project_home() / "fpr_api.key"


class SourceApiSettings(BaseSettings):
    """The source API's address, key and records file."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    fpr_api_url: str = Field(
        f"http://127.0.0.1:{DEFAULT_PORT}", description="Base URL of the FPR source API"
    )
    fpr_api_key: SecretStr | None = Field(None, description="Key sent in the x-api-key header")
    fpr_api_db: str = Field(
        "", description="The API's records file (default <home>/fpr_api.duckdb)"
    )

    def db_path(self) -> Path:
        """Return the records file."""
        return Path(self.fpr_api_db) if self.fpr_api_db else project_home() / "fpr_api.duckdb"

    def key(self) -> str:
        """Return `FPR_API_KEY`, else the local key file's key (made on first use)."""
        if self.fpr_api_key and self.fpr_api_key.get_secret_value():
            return self.fpr_api_key.get_secret_value()
        path = key_file()
        if path.exists() and (found := path.read_text().strip()):
            return found
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        # Written whole to a private temporary file, then linked into place: another process
        # sees either no key file or the complete key, and it is never world-readable.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        try:
            if path.exists():  # an empty file left by a crash
                path.unlink()
            os.link(temp, path)
        except FileExistsError:  # another process made it first: use theirs
            key = path.read_text().strip()
        finally:
            temp.unlink()
        return key
