"""Server settings; the CLI fills them, tests build them directly."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class Settings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    config_dir: Path = Path("model_configs")
    data_dir: Path = Path(".ozwell")
