"""Contrastive training of image and gene towers (PyTorch Lightning)."""
