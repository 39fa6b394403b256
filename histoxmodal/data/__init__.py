"""The paired dataset: spots with expression and image patches, splits, recipes, torch Datasets."""
