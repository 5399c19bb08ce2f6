"""The stages composed: stage functions, the local pipeline, engines, pre-flight checks, baselines and the demo."""
