"""Training and evaluation runs driven by a config (what `main.py` calls)."""
