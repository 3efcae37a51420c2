"""What `ls` shows, kept on each model row, so listing is O(models), not O(versions).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("num_versions", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("latest_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        """
        UPDATE models SET
            num_versions = (SELECT count(*) FROM versions v WHERE v.model_id = models.id),
            latest_version = (SELECT max(v.version) FROM versions v WHERE v.model_id = models.id),
            updated_at = (SELECT max(v.created_at) FROM versions v WHERE v.model_id = models.id),
            size = (
                SELECT coalesce(sum(b.size), 0) FROM versions v
                JOIN blobs b ON b.sha256 = v.blob_sha256 WHERE v.model_id = models.id
            )
        """
    )


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place; recreating the table would cascade its
    # deletion into the rows that reference it (foreign keys are on).
    with op.batch_alter_table("models", recreate="never") as batch:
        batch.drop_column("size")
        batch.drop_column("updated_at")
        batch.drop_column("latest_version")
        batch.drop_column("num_versions")
