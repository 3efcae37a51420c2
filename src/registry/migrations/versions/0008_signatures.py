"""A version's signature (SPEC "Signed versions"): the model signing bundle of its files and
the registry's own envelope over its arch and arguments, as one JSON document; null when
the version is unsigned. The document proves nothing by being here: readers check it
against the keys they trust.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("signature", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("signature")
