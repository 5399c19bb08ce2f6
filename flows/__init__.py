"""Prefect flows: iap-data, iap-precompute, iap-train (the full pipeline), iap-evaluate."""
