"""Prediction heads on embeddings: expression (ridge; more arrive with the evaluation issue)."""
