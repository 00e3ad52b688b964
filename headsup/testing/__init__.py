"""Tiny, randomly initialised components for tests, the quickstart and notebooks."""
