"""OFA: the model (model.py, ModelScope's parameter names), its config and released sizes (config.py), and its
exit adapter (adapter.py)."""
