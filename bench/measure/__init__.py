"""speed.py's measures, one module each, in the order it runs them."""
