"""Inference helpers: tiling with whole-image normalisation, colour fix, face inputs for predict and
the blending baseline."""
