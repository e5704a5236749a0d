"""The tables. Change them only together with a new migration in migrations/versions/."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # SHA-256 of the whole key, hex; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    plan: Mapped[str] = mapped_column(String(32))
    rpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # override of the plan's
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    scopes: Mapped[list] = mapped_column(JSON)
    models: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: every model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRecord(Base):
    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class StoredFile(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(String(300))  # sanitised, for display only
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class StoredResponse(Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    previous_response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds
    # The Response object as returned to the client.
    body: Mapped[dict] = mapped_column(JSON)
    # body["status"], kept beside it so queries never read it out of the JSON (null: stored before 0010, finished)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    # This turn's messages and the reply: what a later previous_response_id chain replays. A message's
    # content is its text, or (with file parts) a list of {"type": "text", "text"} and {"type": "file",
    # "file_id", "chars"} segments, the file re-read when replayed (rows before 0007 hold the file text).
    conversation: Mapped[list] = mapped_column(JSON)
    # What the row holds (body, conversation and input items, as stored JSON), counted in the owner's quota.
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The characters the conversation stands for when replayed, file text included: a chain skips, unread,
    # the turns that surely cannot fit the context.
    replay_chars: Mapped[int] = mapped_column(BigInteger, default=0)


class StoredInputItem(Base):
    """A stored response's input item. The key is the item's place in its response: `id` is the client's
    (any string, repeated across responses and owners) or one the server made."""

    __tablename__ = "response_input_items"

    response_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64))
    item: Mapped[dict] = mapped_column(JSON)


class StoredChatCompletion(Base):
    """A chat completion created with store=true (server/services/chat_store.py): the body as returned, the
    request's messages (each with its id), and the owner's metadata, which alone can change."""

    __tablename__ = "chat_completions"
    __table_args__ = (Index("ix_chat_completions_owner_stored_ms", "owner", "stored_ms"),)  # an owner's list

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds
    # Epoch milliseconds when stored: the lists' order (`created` is whole seconds, so ties would be common).
    stored_ms: Mapped[int] = mapped_column(BigInteger)
    completion_metadata: Mapped[dict] = mapped_column("metadata", JSON)
    body: Mapped[dict] = mapped_column(JSON)  # the chat.completion object, without its metadata
    messages: Mapped[list] = mapped_column(JSON)
    # What the row holds (body, messages and metadata, as stored JSON), counted in the owner's quota.
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class DashboardSession(Base):
    """A signed-in dashboard browser: the cookie holds a random id, this row only its SHA-256 hash."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)  # the admin key that signed in
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(Integer)  # epoch seconds
    expires_at: Mapped[int] = mapped_column(Integer, index=True)


class StoredBatch(Base):
    """A batch (the Batch API): its OpenAI fields, its counts, and which replica runs it (a renewed lease)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # None under --no-auth
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds, as every *_at here
    expires_at: Mapped[int] = mapped_column(Integer)
    in_progress_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[list | None] = mapped_column(JSON, nullable=True)  # BatchError objects
    batch_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    output_expires_after: Mapped[int | None] = mapped_column(Integer, nullable=True)  # seconds
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class BatchResult(Base):
    """One finished line of a running batch: its output line, written once (the key makes a second write fail).
    The rows go when the batch's output and error files are written."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based, in the input file
    ok: Mapped[bool] = mapped_column(Boolean)  # to the output file (else the error file)
    record: Mapped[str] = mapped_column(Text)  # the JSON line, as written to the file


class VectorStore(Base):
    """A vector store (server/vector_stores/service.py). `version` goes up on every change to what its search
    sees (a file indexed or removed, attributes changed), so each replica's cached index knows when it is stale."""

    __tablename__ = "vector_stores"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)  # epoch seconds, as every *_at here
    last_active_at: Mapped[int] = mapped_column(Integer)
    expires_after_days: Mapped[int | None] = mapped_column(Integer, nullable=True)  # anchored on last_active_at
    store_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    embedding_model: Mapped[str] = mapped_column(String(200))  # the model id its vectors come from
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorStoreFile(Base):
    """A file attached to a store: its ingestion status, and what its chunks hold (counted in the owner's quota)."""

    __tablename__ = "vector_store_files"

    vector_store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # in_progress, completed, failed, cancelled
    created_at: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {"code", "message"}
    max_chunk_size_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap_tokens: Mapped[int] = mapped_column(Integer)
    attributes: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorStoreFileBatch(Base):
    """A file batch: its files are the vector_store_files rows with its id; only `cancelled_at` is its own state."""

    __tablename__ = "vector_store_file_batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector_store_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(Integer)
    cancelled_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VectorStoreChunk(Base):
    """One chunk of an indexed file: its text and its embedding (float32, little-endian bytes). A file's chunks
    are written in the transaction that marks it completed, so search never sees a file half indexed."""

    __tablename__ = "vector_store_chunks"
    __table_args__ = (Index("ix_vector_store_chunks_store_file", "vector_store_id", "file_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)  # the chunk's place in its file
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
