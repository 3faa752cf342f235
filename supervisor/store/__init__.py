"""Persistence: the SQLite schema (SQLAlchemy models, Alembic migrations), the repository and read models."""
