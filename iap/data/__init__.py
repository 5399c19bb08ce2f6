"""Data layer: manifests, img2dataset downloads, English sources and DuckDB-filtered snapshots."""
