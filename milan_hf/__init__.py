"""milan_hf."""
