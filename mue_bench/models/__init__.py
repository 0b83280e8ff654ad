"""Model families: each exposes an adapter the exit engine drives layer by layer."""
