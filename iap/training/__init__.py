"""Training the Chinese encoder: the loop, its checkpoints, experiment trackers, and how a run is assembled from a cache or live."""
