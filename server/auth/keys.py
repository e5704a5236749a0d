"""API keys: `ozw_` + 43 URL-safe random characters, stored only as a SHA-256 hash.

Every request looks its key up in the database (no cache), so a revocation counts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from server.auth.plans import Limits, Plans
from server.db.database import Database
from server.db.models import ApiKey

KEY_PREFIX = "ozw_"
API_SCOPES = ("models", "chat", "completions", "embeddings", "files", "responses")
ADMIN_SCOPE = "admin"  # the admin API: its own owner's keys and usage
OPERATOR_SCOPE = "operator"  # server-wide views: /metrics, and /ready's reasons
ALL_SCOPES = (*API_SCOPES, ADMIN_SCOPE, OPERATOR_SCOPE)
# The largest per-key rpm or tpm (the columns are integers; a bigger number is a typo or an attack).
MAX_LIMIT = 10**12
_VISIBLE_PREFIX = 12  # "ozw_" + 8 characters, enough to tell keys apart in a list
_TOUCH_EVERY = timedelta(seconds=60)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def looks_like_key(plaintext: str) -> bool:
    body = plaintext[len(KEY_PREFIX):]
    return (plaintext.startswith(KEY_PREFIX) and 32 <= len(body) <= 128
            and all(c.isalnum() or c in "-_" for c in body))


@dataclass(frozen=True)
class Caller:
    """Who is calling: what the routes and services may know of a key (never the key itself)."""

    key_id: str
    prefix: str
    name: str
    owner: str
    plan: str
    scopes: frozenset[str]
    models: frozenset[str] | None
    limits: Limits

    def may_use_model(self, names: list[str]) -> bool:
        return self.models is None or any(name in self.models for name in names)


class KeyAdminError(ValueError):
    """A key operation that cannot be done (bad plan, ambiguous prefix, ...)."""


class GrantError(KeyAdminError):
    """A key asked to mint a key with more than it holds itself (403)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class KeyService:
    def __init__(self, database: Database, plans: Plans):
        self.database = database
        self.plans = plans

    def create(self, name: str, owner: str | None = None, plan: str = "free", rpm: int | None = None,
               tpm: int | None = None, scopes: list[str] | None = None, models: list[str] | None = None,
               admin: bool = False, operator: bool = False, grantor: Caller | None = None) -> tuple[ApiKey, str]:
        """Make a key; the plaintext is returned once and never stored.

        `scopes` None means every API scope (or, for a grantor, every API scope it holds itself); an
        empty list is refused. With a `grantor` (the admin key of an API call) the new key gets nothing
        its grantor lacks: no scope, no model, no higher plan and no higher rpm or tpm."""
        for field_name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise KeyAdminError(f"{field_name} must be between 1 and {MAX_LIMIT}")
        try:
            limits = self.plans.limits_for(plan, rpm, tpm)
        except ValueError as exc:
            raise KeyAdminError(str(exc)) from None
        if scopes is not None and not scopes:
            raise KeyAdminError("scopes must name at least one scope (leave it out for the default)")
        if scopes is not None:
            chosen = list(dict.fromkeys(scopes))
        elif grantor is not None:
            chosen = [s for s in API_SCOPES if s in grantor.scopes]
        else:
            chosen = list(API_SCOPES)
        unknown = [s for s in chosen if s not in ALL_SCOPES]
        if unknown:
            raise KeyAdminError(f"unknown scope(s) {', '.join(unknown)}; scopes are {', '.join(ALL_SCOPES)}")
        for flag, scope in ((admin, ADMIN_SCOPE), (operator, OPERATOR_SCOPE)):
            if flag and scope not in chosen:
                chosen.append(scope)
        if grantor is not None:
            models = self._check_grant(grantor, plan, limits, chosen, models)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(12), key_hash=hash_key(plaintext), prefix=plaintext[:_VISIBLE_PREFIX],
            name=name, owner=owner or name, plan=plan, rpm=rpm, tpm=tpm, scopes=chosen,
            models=list(models) if models else None, created_at=datetime.now(UTC),
        )
        with self.database.session() as session, session.begin():
            session.add(record)
        return record, plaintext

    def _check_grant(self, grantor: Caller, plan: str, limits: Limits, scopes: list[str],
                     models: list[str] | None) -> list[str] | None:
        """Refuse anything above the grantor; returns the models the new key gets."""
        extra = [s for s in scopes if s not in grantor.scopes]
        if extra:
            raise GrantError(f"This key cannot grant scope(s) it does not hold: {', '.join(extra)}.", "scopes")
        if self.plans.rank(plan) > self.plans.rank(grantor.plan):
            raise GrantError(f"This key cannot grant the plan {plan!r}, above its own ({grantor.plan!r}).", "plan")
        for field_name in ("rpm", "tpm"):
            mine, theirs = getattr(limits, field_name), getattr(grantor.limits, field_name)
            if mine > theirs:
                raise GrantError(f"This key cannot grant {field_name} {mine}, above its own ({theirs}).", field_name)
        if grantor.models is None:
            return models
        if not models:
            return sorted(grantor.models)  # a restricted key makes keys restricted the same way
        outside = [m for m in models if m not in grantor.models]
        if outside:
            raise GrantError(f"This key cannot grant model(s) it may not use: {', '.join(outside)}.", "models")
        return models

    def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key, oldest first; only `owner`'s when given."""
        statement = select(ApiKey).order_by(ApiKey.created_at)
        if owner is not None:
            statement = statement.where(ApiKey.owner == owner)
        with self.database.session() as session:
            return list(session.scalars(statement))

    def get(self, key_id: str) -> ApiKey | None:
        with self.database.session() as session:
            return session.get(ApiKey, key_id)

    def count_active(self) -> int:
        return sum(1 for key in self.list() if key.revoked_at is None)

    def revoke(self, id_or_prefix: str) -> ApiKey | None:
        with self.database.session() as session, session.begin():
            found = list(session.scalars(select(ApiKey).where(
                (ApiKey.id == id_or_prefix) | (ApiKey.prefix.startswith(id_or_prefix)))))
            exact = [k for k in found if k.id == id_or_prefix]
            found = exact or found
            if not found:
                return None
            if len(found) > 1:
                raise KeyAdminError(f"{id_or_prefix!r} matches {len(found)} keys; give more of the prefix or the id")
            key = found[0]
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
            return key

    def authenticate(self, plaintext: str) -> Caller | None:
        """The caller for a presented key, or None (unknown, malformed or revoked)."""
        if not looks_like_key(plaintext):
            return None
        presented = hash_key(plaintext)
        with self.database.session() as session, session.begin():
            key = session.scalars(select(ApiKey).where(ApiKey.key_hash == presented)).first()
            # The lookup is by hash; compare the hashes in constant time all the same.
            if key is None or not hmac.compare_digest(key.key_hash, presented) or key.revoked_at is not None:
                return None
            now = datetime.now(UTC)
            last = key.last_used_at.replace(tzinfo=UTC) if key.last_used_at and not key.last_used_at.tzinfo \
                else key.last_used_at
            if last is None or now - last > _TOUCH_EVERY:
                key.last_used_at = now
            return self.caller(key)

    def caller(self, key: ApiKey) -> Caller:
        return Caller(key_id=key.id, prefix=key.prefix, name=key.name, owner=key.owner, plan=key.plan,
                      scopes=frozenset(key.scopes), models=frozenset(key.models) if key.models else None,
                      limits=self.plans.limits_for(key.plan, key.rpm, key.tpm))
