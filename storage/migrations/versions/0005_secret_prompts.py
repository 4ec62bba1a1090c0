"""secret prompts and held secrets: a password goes to the plan it answers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("plan_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("login", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_secret_prompts_plan_id", "secret_prompts", ["plan_id"])
    op.create_index("ix_secret_prompts_user_message", "secret_prompts", ["user_id", "message_id"])
    op.create_table(
        "held_secrets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("choices", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_held_secrets_user_id", "held_secrets", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_held_secrets_user_id", table_name="held_secrets")
    op.drop_table("held_secrets")
    op.drop_index("ix_secret_prompts_user_message", table_name="secret_prompts")
    op.drop_index("ix_secret_prompts_plan_id", table_name="secret_prompts")
    op.drop_table("secret_prompts")
