"""Prediction heads on embeddings: expression (ridge, MLP, BLEEP-style retrieval; one API in
:func:`predict_expression`), slide/patient labels (ABMIL, mean pooling) and per-spot probes."""

from histoxmodal.heads.predict import predict_expression

__all__ = ["predict_expression"]
