"""Alembic migrations of the catalog, shipped inside the wheel as `registry.migrations`."""
