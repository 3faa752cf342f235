"""Alembic environment. The supervisor passes its engine in; `alembic` on the command line uses -x db=PATH."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from supervisor.store.db import transactional_ddl_engine
from supervisor.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        db = context.get_x_argument(as_dictionary=True).get("db", "supervisor.db")
        engine = transactional_ddl_engine(create_engine(f"sqlite:///{db}"))
    with engine.connect() as connection:
        # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
        # transactional_ddl: the supervisor's migration engine makes DDL transactional (store/db.py), so
        # the whole upgrade is one transaction and a crash half-way leaves the previous revision intact.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database file")
run_migrations_online()
