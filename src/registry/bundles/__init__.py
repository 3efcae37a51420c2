"""Bundles: versions and their blobs moved between registries in one tar file.

`archive` writes and reads the tar (its index, its blobs), treating what it
reads as untrusted; `exchange` moves versions between a catalog and store
and a bundle: export with fingerprints and parents, import all or nothing.
"""
