"""apply lease: the process applying a plan, until when, and cards to refresh

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(
            sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
        batch.add_column(sa.Column("lease_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("card_stale", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_plans_card_stale", ["card_stale"])


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_index("ix_plans_card_stale")
        batch.drop_column("card_stale")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
