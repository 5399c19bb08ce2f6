"""Held-out metrics, image metrics, the report, and the data-world plug-in that scores generated images."""
