"""The files of a folder version, each a content-addressed blob (SPEC "Folders").

A folder version's own digest names the blob of its file list; its files are
listed here so that gc keeps each one's blob and a shard two versions share
is stored once. A single-file version has no rows here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name="fk_version_files_version_id_versions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["sha256"], ["blobs.sha256"], name="fk_version_files_sha256_blobs"),
        sa.PrimaryKeyConstraint("version_id", "path", name="pk_version_files"),
    )
    op.create_index("ix_version_files_sha256", "version_files", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_version_files_sha256", table_name="version_files")
    op.drop_table("version_files")
