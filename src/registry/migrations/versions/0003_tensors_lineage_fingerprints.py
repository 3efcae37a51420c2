"""Tensor manifests, lineage and behaviour fingerprints.

Versions recorded before this revision have no tensor manifest; the registry
fills one in from the blob the first time it is needed (`show --tensors`,
`diff`), so upgrading never reads a blob.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tensors",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("dtype", sa.String(length=32), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name="fk_tensors_version_id_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "position", name="pk_tensors"),
    )
    op.create_table(
        "lineage",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_model_id", sa.Integer(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_lineage_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_model_id"],
            ["models.id"],
            name="fk_lineage_parent_model_id_models",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name="pk_lineage"),
    )
    op.create_index(
        "ix_lineage_parent_model_id_parent_version",
        "lineage",
        ["parent_model_id", "parent_version"],
    )
    op.create_table(
        "fingerprints",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name="fk_fingerprints_version_id_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name="pk_fingerprints"),
    )


def downgrade() -> None:
    op.drop_table("fingerprints")
    op.drop_index("ix_lineage_parent_model_id_parent_version", table_name="lineage")
    op.drop_table("lineage")
    op.drop_table("tensors")
