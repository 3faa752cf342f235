"""the newest checkpoint when an attempt was submitted

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("start_mark", sa.Text(), nullable=True))
    # Attempts from before: their own newest mark is the most that can be said. It makes a time limit
    # count as it always did (no progress seen), never spare an attempt that made none.
    op.execute("UPDATE attempts SET start_mark = saved_mark")


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("start_mark")
