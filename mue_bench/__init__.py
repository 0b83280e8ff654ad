"""mue-bench: sweep, measure and pick MuE early-exit thresholds for encoder-decoder VLMs."""

__version__ = "0.1.0"
