"""What leaves a run: a diffusers export (and its Hub card) and the checkpoint registry."""
