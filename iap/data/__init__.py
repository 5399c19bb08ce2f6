"""Data layer: the shapes world, manifests, img2dataset downloads and DuckDB-filtered snapshots."""
