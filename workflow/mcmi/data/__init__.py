"""Datasets as tensors or folders, batch-wise augmentation, few-/zero-shot subsets."""
