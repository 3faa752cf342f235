"""an ended attempt's node-seconds, used and wasted, settled once so `status` sums them in SQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_used_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("settled_wasted_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("settled_wasted_s")
        batch_op.drop_column("settled_used_s")
