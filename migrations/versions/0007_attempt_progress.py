"""where an attempt's step rate counts from, and its last loss

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("loss", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("loss")
        batch_op.drop_column("progress_at")
        batch_op.drop_column("first_step")
