"""Files: metadata in the database, bytes on disk under <data-dir>/files/, named by file id.

An upload streams into a temporary file beside its final place, is fsynced, renamed into place,
and only then gets its database row; so a crash leaves either nothing visible or a complete file.
At start, temporaries and bytes without a row are removed. A file belongs to its owner: anyone
else gets 404, never 403, and never sees it listed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from server.db.database import Database
from server.db.models import StoredFile
from server.errors import InvalidRequestError, NotFoundError, OpenAIError
from server.services.storage_quota import used_bytes
from server.uploads import MultipartFormReader, UploadError

log = logging.getLogger("ozwell.server")

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
TEXT_SUFFIXES = {"", ".txt", ".md", ".markdown", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".html", ".htm",
                 ".yaml", ".yml", ".toml", ".ini", ".log", ".rst", ".py", ".js", ".ts", ".java", ".c", ".h",
                 ".cpp", ".go", ".rs", ".sh", ".sql", ".tex"}
_TMP_PREFIX = ".upload-"
# A temporary is named .upload-<host>~<pid>~<file id>, so a replica sharing the directory (--files-dir)
# knows whose it is. An upload in flight writes at least every --body-timeout (else it is cut), so a
# temporary (or renamed bytes still without their row) untouched this long belongs to no live upload.
STALE_AFTER_S = 15 * 60
_TMP_NAME = re.compile(r"^\.upload-(?P<host>[^~]+)~(?P<pid>\d+)~(?P<id>file-[0-9a-f]{32})$")
_FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
_FORM_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PayloadTooLargeError(OpenAIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "file_too_large"


def _displayable(char: str) -> bool:
    # Cc: C0, DEL and C1 controls; Cf: format characters such as U+202E (right-to-left override) and
    # zero-width ones; Zl and Zp: U+2028 and U+2029, which break lines in headers and logs.
    return unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp")


def sanitise_filename(raw: str | None) -> str:
    """A name for display only: no path, no control or format characters, at most 255 bytes of UTF-8.

    Clients percent-encode CR, LF and quotes in multipart filenames (as the HTML spec says), so the
    escapes are decoded first and the result cleaned like any raw name.
    """
    name = unquote(raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if _displayable(c)).strip().lstrip(".") or "file"
    encoded = name.encode("utf-8")[:255]
    return encoded.decode("utf-8", "ignore") or "file"


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback for old clients, and the UTF-8 name percent-encoded in filename*."""
    name = sanitise_filename(filename)
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def file_object(record: StoredFile) -> dict:
    body = {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": record.created_at,
            "filename": record.filename, "purpose": record.purpose, "status": "processed"}
    if record.expires_at is not None:
        body["expires_at"] = record.expires_at
    return body


class FileService:
    def __init__(self, database: Database, data_dir: Path, max_file_bytes: int, owner_quota_bytes: int,
                 files_dir: Path | None = None, instance: str | None = None):
        self.database = database
        # A --files-dir may be shared by several replicas; <data-dir>/files is this server's alone.
        self.shared = files_dir is not None
        self.dir = Path(files_dir) if files_dir is not None else Path(data_dir) / "files"
        self.host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"
        self.max_file_bytes = max_file_bytes
        self.owner_quota_bytes = owner_quota_bytes
        self._inflight: dict[str, int] = {}  # owner -> bytes of uploads not yet stored (event loop only)
        self._locks: dict[str, asyncio.Lock] = {}  # owner -> held while an upload's row goes in (kept)
        # Called with (session, file ids) in the transaction that deletes files: what refers to them goes too
        # (vector stores detach them).
        self.delete_hooks: list[Callable[[Session, list[str]], None]] = []

    # ---- start-up and sweeping ------------------------------------------------------------
    def prepare(self) -> None:
        """Make the directory (0700) and remove what a crash left: temporaries, and bytes with no row.

        In a shared --files-dir, another replica may be mid-upload, so only what is surely dead goes: a
        temporary of this host whose process is gone, or anything untouched for STALE_AFTER_S."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        with self.database.session() as session:
            known = set(session.scalars(select(StoredFile.id)))
        now = time.time()
        for path in self.dir.iterdir():
            temporary = path.name.startswith(_TMP_PREFIX)
            if not temporary and not (_FILE_ID.match(path.name) and path.name not in known):
                continue
            if self.shared and not self._surely_dead(path, temporary, now):
                continue
            log.info("removing leftover upload %s", path.name)
            path.unlink(missing_ok=True)

    def _surely_dead(self, path: Path, temporary: bool, now: float) -> bool:
        try:
            if now - path.stat().st_mtime > STALE_AFTER_S:
                return True
        except FileNotFoundError:
            return False
        match = _TMP_NAME.match(path.name) if temporary else None
        if match is None or match["host"] != self.host:
            return False  # another host's, or bytes whose row may be going in right now: wait for the bound
        return not _alive(int(match["pid"]))

    def sweep_expired(self, now: int | None = None) -> int:
        now = int(time.time()) if now is None else now
        with self.database.session() as session, session.begin():
            expired = list(session.scalars(select(StoredFile).where(StoredFile.expires_at <= now)))
            for hook in self.delete_hooks if expired else ():
                hook(session, [record.id for record in expired])
            for record in expired:
                session.delete(record)
        for record in expired:
            (self.dir / record.id).unlink(missing_ok=True)
        return len(expired)

    # ---- upload ------------------------------------------------------------------------------
    def used_bytes(self, owner: str) -> int:
        """What the owner holds against `owner_quota_bytes`: its files and stored responses (a running batch adds
        its results to it)."""
        with self.database.session() as session:
            return used_bytes(session, owner)

    async def upload(self, owner: str, content_type: str, chunks: AsyncIterator[bytes]) -> dict:
        """Stream one multipart upload to disk, within the per-file cap and the owner's quota.

        The quota holds under concurrency: every byte in flight counts against its owner as it arrives
        (`_inflight`, changed only on the event loop, so each check-and-add is atomic), and the final check
        (stored bytes + bytes in flight) and the row's insert run under the owner's lock, so two uploads
        cannot both pass on the same room. Bytes in flight count until the row that holds them exists."""
        used = await asyncio.to_thread(self.used_bytes, owner)
        counted = 0

        def account(total: int) -> None:
            nonlocal counted
            self._inflight[owner] = self._inflight.get(owner, 0) + total - counted
            counted = total
            if total > self.max_file_bytes:
                raise PayloadTooLargeError(f"The file is larger than the maximum of {self.max_file_bytes} bytes.",
                                           param="file")
            if used + self._inflight[owner] > self.owner_quota_bytes:
                raise self._quota_error(used, self._inflight[owner] - total)

        file_id = "file-" + secrets.token_hex(16)
        temp = self.dir / f"{_TMP_PREFIX}{self.host}~{os.getpid()}~{file_id}"
        try:
            reader = MultipartFormReader(content_type, None, account, _FORM_FIELDS)
        except UploadError as exc:
            raise InvalidRequestError(str(exc), param=exc.param, code=exc.code) from None
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as sink:
                reader.sink = sink
                try:
                    await reader.read(chunks)
                except UploadError as exc:
                    raise InvalidRequestError(str(exc), param=exc.param, code=exc.code) from None
                fields = reader.fields
                purpose = self._check_fields(fields)
                created_at = int(time.time())  # one clock reading: expires_at is exactly created_at + seconds
                expires_at = self._expires_at(fields, created_at)
                sink.flush()
                os.fsync(sink.fileno())
            if purpose == "batch":
                await asyncio.to_thread(self._check_jsonl, temp)
            record = StoredFile(id=file_id, owner=owner, filename=sanitise_filename(reader.filename),
                                purpose=purpose, bytes=reader.file_bytes, created_at=created_at,
                                expires_at=expires_at)
            lock = self._locks.setdefault(owner, asyncio.Lock())
            async with lock:
                stored = await asyncio.to_thread(self.used_bytes, owner)
                in_flight = self._inflight.get(owner, 0)
                if stored + in_flight > self.owner_quota_bytes:
                    raise self._quota_error(stored, in_flight - counted)
                await asyncio.to_thread(self._commit, temp, record)
                self._release(owner, counted)  # the row holds these bytes now
                counted = 0
            return file_object(record)
        finally:
            self._release(owner, counted)
            temp.unlink(missing_ok=True)

    def _release(self, owner: str, counted: int) -> None:
        left = self._inflight.get(owner, 0) - counted
        if left:
            self._inflight[owner] = left
            return
        self._inflight.pop(owner, None)

    def _quota_error(self, stored: int, others_in_flight: int) -> PayloadTooLargeError:
        left = max(self.owner_quota_bytes - stored - others_in_flight, 0)
        return PayloadTooLargeError(
            f"This upload would exceed your storage quota of {self.owner_quota_bytes} bytes ({left} bytes left, "
            "counting stored responses and uploads still in progress). Delete files or stored responses to make "
            "room.", param="file", code="quota_exceeded")

    def _commit(self, temp: Path, record: StoredFile) -> None:
        os.replace(temp, self.dir / record.id)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        try:
            with self.database.session() as session, session.begin():
                session.add(record)
        except Exception:
            (self.dir / record.id).unlink(missing_ok=True)
            raise

    def store_generated(self, owner: str, file_id: str, filename: str, purpose: str, lines: Iterable[str],
                        expires_after_s: int | None = None) -> StoredFile | None:
        """Store a file the server wrote (a batch's output), as atomically as an upload, streaming `lines` to
        disk as they come; None (nothing stored) when there were none. Idempotent: the id is the caller's
        (derived from what it holds), and a file already stored under it is returned as is, so a writer that
        crashed after storing it and runs again stores nothing twice. Its bytes count in the owner's quota
        like an upload's; the batch runner keeps its results within the quota as they are made."""
        with self.database.session() as session:
            existing = session.get(StoredFile, file_id)
        if existing is not None:
            return existing
        temp = self.dir / f"{_TMP_PREFIX}{self.host}~{os.getpid()}~{file_id}"
        size = 0
        try:
            with open(temp, "xb") as sink:
                for line in lines:
                    data = line.encode("utf-8") + b"\n"
                    sink.write(data)
                    size += len(data)
                sink.flush()
                os.fsync(sink.fileno())
            if size == 0:
                return None
            created_at = int(time.time())
            record = StoredFile(id=file_id, owner=owner, filename=sanitise_filename(filename), purpose=purpose,
                                bytes=size, created_at=created_at,
                                expires_at=created_at + expires_after_s if expires_after_s else None)
            self._commit(temp, record)
            return record
        finally:
            temp.unlink(missing_ok=True)

    @staticmethod
    def _check_fields(fields: dict[str, str]) -> str:
        purpose = fields.get("purpose")
        if purpose is None:
            raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose",
                                      code="missing_required_parameter")
        if purpose not in PURPOSES:
            raise InvalidRequestError(f"Invalid value for 'purpose': {purpose!r}; use one of {', '.join(PURPOSES)}.",
                                      param="purpose", code="invalid_value")
        return purpose

    @staticmethod
    def _expires_at(fields: dict[str, str], created_at: int) -> int | None:
        anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
        if anchor is None and seconds is None:
            return None
        if anchor != "created_at":
            raise InvalidRequestError("expires_after.anchor must be 'created_at'.", param="expires_after.anchor",
                                      code="invalid_value")
        if seconds is None or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
            raise InvalidRequestError("expires_after.seconds must be an integer from 3600 to 2592000.",
                                      param="expires_after.seconds", code="invalid_value")
        return created_at + int(seconds)

    @staticmethod
    def _check_jsonl(path: Path) -> None:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    value = None
                if not isinstance(value, dict):
                    raise InvalidRequestError(f"A batch file must be JSONL: line {number} is not a JSON object.",
                                              param="file", code="invalid_file")

    # ---- reading -----------------------------------------------------------------------------
    def get(self, owner: str, file_id: str) -> StoredFile:
        with self.database.session() as session:
            record = session.get(StoredFile, file_id)
        if record is None or record.owner != owner:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return record

    def path(self, record: StoredFile) -> Path:
        return self.dir / record.id

    def list(self, owner: str, purpose: str | None, limit: int, order: str, after: str | None) -> dict:
        ascending = order == "asc"
        statement = select(StoredFile).where(StoredFile.owner == owner)
        if purpose:
            statement = statement.where(StoredFile.purpose == purpose)
        if after:
            cursor = self.get(owner, after)
            newer = or_(StoredFile.created_at > cursor.created_at,
                        and_(StoredFile.created_at == cursor.created_at, StoredFile.id > cursor.id))
            older = or_(StoredFile.created_at < cursor.created_at,
                        and_(StoredFile.created_at == cursor.created_at, StoredFile.id < cursor.id))
            statement = statement.where(newer if ascending else older)
        keys = (StoredFile.created_at, StoredFile.id) if ascending else (StoredFile.created_at.desc(),
                                                                         StoredFile.id.desc())
        with self.database.session() as session:
            rows = list(session.scalars(statement.order_by(*keys).limit(limit + 1)))
        page = rows[:limit]
        return {"object": "list", "data": [file_object(r) for r in page],
                "first_id": page[0].id if page else "", "last_id": page[-1].id if page else "",
                "has_more": len(rows) > limit}

    def delete(self, owner: str, file_id: str) -> dict:
        record = self.get(owner, file_id)
        # Row first: a crash after it leaves bytes with no row, which the next start removes.
        with self.database.session() as session, session.begin():
            for hook in self.delete_hooks:
                hook(session, [record.id])
            session.delete(session.get(StoredFile, record.id))
        self.path(record).unlink(missing_ok=True)
        return {"id": record.id, "object": "file", "deleted": True}

    def text_size(self, owner: str, file_id: str, max_bytes: int) -> int:
        """The size of a text file that may go in a prompt, from its record alone (a 400 as `read_text`'s)."""
        return self._prompt_file(owner, file_id, max_bytes).bytes

    def read_text(self, owner: str, file_id: str, max_bytes: int) -> str:
        """A UTF-8 text file's content, for a prompt; anything else is a 400 saying what works."""
        record = self._prompt_file(owner, file_id, max_bytes)
        try:
            return self.path(record).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"File {file_id} is not UTF-8 text; files in prompts must be UTF-8 text "
                                      "such as .txt, .md, .json or .csv.", param="file_id",
                                      code="unsupported_file") from None

    def image_bytes(self, owner: str, file_id: str, max_bytes: int) -> bytes:
        """An uploaded image's bytes, for an image part (server/images.py checks what they are): the file must be
        the owner's (else NotFoundError), uploaded with purpose 'vision' or 'user_data', and at most `max_bytes`
        (else a 400). Blocking."""
        from server.images import IMAGE_PURPOSES

        record = self.get(owner, file_id)
        if record.purpose not in IMAGE_PURPOSES:
            raise InvalidRequestError(f"File {file_id} was uploaded with purpose '{record.purpose}'; an image part "
                                      "takes a file uploaded with purpose 'vision' or 'user_data'.", param="file_id",
                                      code="invalid_file_purpose")
        if record.bytes > max_bytes:
            raise InvalidRequestError(f"File {file_id} is larger than this server's image limit of "
                                      f"{max_bytes / (1024 * 1024):g} MB (--max-image-mb).", param="file_id",
                                      code="image_too_large")
        with self.path(record).open("rb") as handle:
            return handle.read(max_bytes + 1)

    def _prompt_file(self, owner: str, file_id: str, max_bytes: int) -> StoredFile:
        record = self.get(owner, file_id)
        if Path(record.filename).suffix.lower() not in TEXT_SUFFIXES:
            raise InvalidRequestError(
                f"File {file_id} ({record.filename}) is not a supported text file; files in prompts must be "
                "UTF-8 text such as .txt, .md, .json or .csv.", param="file_id", code="unsupported_file")
        if record.bytes > max_bytes:
            raise InvalidRequestError(f"File {file_id} is too large to put in a prompt ({record.bytes} bytes; "
                                      f"at most {max_bytes}).", param="file_id", code="unsupported_file")
        return record
