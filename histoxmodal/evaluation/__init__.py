"""Metrics: batch mixing of embeddings (more protocols arrive with the evaluation issue)."""
