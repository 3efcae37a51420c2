"""A version's size on its own row, so that a listing reads no blob row per version.

The size a record reports: a folder's, its files' total; a file's, its blob's.
Looking the blob up by its SHA-256 was a sixth of a listing's time on PostgreSQL
(a text index probe per row); see bench/why.md, figure 6.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place, never recreated: that would cascade into the tags, tensors and files.
    with op.batch_alter_table("versions", recreate="never") as batch:
        batch.add_column(sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        """
        UPDATE versions SET size = coalesce(
            (SELECT sum(f.size) FROM version_files f WHERE f.version_id = versions.id),
            (SELECT b.size FROM blobs b WHERE b.sha256 = versions.blob_sha256),
            0
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("versions", recreate="never") as batch:
        batch.drop_column("size")
