"""Tools that let tests kill the real daemon at chosen steps of a pass."""
