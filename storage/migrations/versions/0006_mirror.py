"""the PBX mirror: each record as last read, and when

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirror",
        sa.Column("pbx", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("read_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pbx", "kind", "key"),
    )
    op.create_index("ix_mirror_pbx_kind_read_at", "mirror", ["pbx", "kind", "read_at"])


def downgrade() -> None:
    op.drop_index("ix_mirror_pbx_kind_read_at", table_name="mirror")
    op.drop_table("mirror")
