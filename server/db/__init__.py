"""Durable state (keys, usage) through SQLAlchemy; schema changes go through Alembic migrations."""
