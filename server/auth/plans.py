"""Plans: per-minute request and token limits, read from a YAML file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PLANS_FILE = Path(__file__).resolve().parents[1] / "plans.yaml"


class PlanLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, ge=1, le=10**12)
    tpm: int | None = Field(default=None, ge=1, le=10**12)


@dataclass(frozen=True)
class Limits:
    """What applies to one key: its plan's numbers, or its own overrides."""

    rpm: int
    tpm: int


class Plans:
    def __init__(self, plans: dict[str, PlanLimits]):
        self._plans = plans

    @classmethod
    def from_file(cls, path: Path = DEFAULT_PLANS_FILE) -> Plans:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        try:
            return cls({name: PlanLimits(**(value or {})) for name, value in raw.items()})
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @property
    def names(self) -> list[str]:
        return list(self._plans)

    def rank(self, plan: str) -> int:
        """Plans are listed from the lowest to the highest (free, pro, enterprise); an admin key may
        grant its own plan or a lower one."""
        return self.names.index(plan) if plan in self._plans else len(self._plans)

    def limits_for(self, plan: str, rpm: int | None, tpm: int | None) -> Limits:
        if plan not in self._plans:
            raise ValueError(f"unknown plan {plan!r}; plans are {', '.join(self._plans)}")
        base = self._plans[plan]
        rpm, tpm = rpm or base.rpm, tpm or base.tpm
        if rpm is None or tpm is None:
            raise ValueError(f"plan {plan!r} has no default limits: give the key its own rpm and tpm")
        return Limits(rpm=rpm, tpm=tpm)
