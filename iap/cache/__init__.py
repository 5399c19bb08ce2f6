"""The frozen English side computed once and read back: the writer (precompute), the budget (--dry-run), the reader the training loop consumes, and the live source with the same interface."""
