"""Dashboard sessions, kept in the database so they survive a restart and are shared by replicas.

The browser's cookie holds a random id (32 bytes); the table holds only its SHA-256 hash, the admin key
that signed in (by id, never the key), the session's CSRF token and its expiry. Every request looks the
session up and re-checks its key, so a revoked key or one that lost the admin scope ends its sessions at once.
Signing out deletes the row: the old cookie is worthless after it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete

from server.auth.keys import ADMIN_SCOPE, Caller, KeyService
from server.db.database import Database
from server.db.models import DashboardSession


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    caller: Caller
    csrf_token: str
    expires_at: int


class SessionService:
    def __init__(self, database: Database, keys: KeyService, ttl_s: float, clock=time.time):
        self.database, self.keys, self.ttl_s, self._clock = database, keys, ttl_s, clock

    def sign_in(self, plaintext: str) -> tuple[str, SignedIn] | None:
        """A new session for an admin-scoped key: (the cookie's id, the session), or None for any other key."""
        caller = self.keys.authenticate(plaintext)
        if caller is None or ADMIN_SCOPE not in caller.scopes:
            return None
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = int(self._clock())
        expires = now + max(int(self.ttl_s), 1)
        self.sweep()  # expired sessions leave the table as new ones come
        with self.database.session() as session, session.begin():
            session.add(DashboardSession(id_hash=_hash(session_id), key_id=caller.key_id, csrf_token=csrf,
                                         created_at=now, expires_at=expires))
        return session_id, SignedIn(caller, csrf, expires)

    def resolve(self, session_id: str | None) -> SignedIn | None:
        """The live session for a cookie's id, or None (unknown, expired, or its key revoked or no longer admin)."""
        if not session_id or len(session_id) > 128:
            return None
        with self.database.session() as session:
            row = session.get(DashboardSession, _hash(session_id))
        if row is None or row.expires_at <= self._clock():
            return None
        key = self.keys.get(row.key_id)
        if key is None or key.revoked_at is not None or ADMIN_SCOPE not in key.scopes:
            return None
        return SignedIn(self.keys.caller(key), row.csrf_token, row.expires_at)

    def sign_out(self, session_id: str | None) -> None:
        if session_id:
            with self.database.session() as session, session.begin():
                session.execute(delete(DashboardSession).where(DashboardSession.id_hash == _hash(session_id)))

    def sweep(self) -> int:
        """Expired sessions leave the table."""
        with self.database.session() as session, session.begin():
            return session.execute(delete(DashboardSession).where(
                DashboardSession.expires_at <= self._clock())).rowcount or 0
