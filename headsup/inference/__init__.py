"""Inference helpers: the blending baseline (tiling and colour fix arrive with issue 7)."""
