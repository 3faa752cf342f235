"""campaigns: runs grouped under one name with a job cap and a node-hour budget; stages that may share a prepare

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("spec_path", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("campaign", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_runs_campaign", ["campaign"])
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("share_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prepared_path", sa.Text(), nullable=True))
        batch_op.create_index("ix_stages_share_key", ["share_key"])
        batch_op.create_index("ix_stages_prepared_path", ["prepared_path"])


def downgrade() -> None:
    with op.batch_alter_table("stages", schema=None) as batch_op:
        batch_op.drop_index("ix_stages_prepared_path")
        batch_op.drop_index("ix_stages_share_key")
        batch_op.drop_column("prepared_path")
        batch_op.drop_column("share_key")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_campaign")
        batch_op.drop_column("campaign")
    op.drop_table("campaigns")
