"""BLAKE3 digests on blobs, so reads verify on every core.

Blobs recorded earlier keep their chunk digests; `registry verify` records
their BLAKE3 after checking their SHA-256.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("blake3", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place; recreating the table would cascade its
    # deletion into the rows that reference it (foreign keys are on).
    with op.batch_alter_table("blobs", recreate="never") as batch:
        batch.drop_column("blake3")
