"""Datasets: the synthetic `shapes` benchmark and loaders for the on-disk formats it shares with real data."""
