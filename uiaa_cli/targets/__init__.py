"""Ratings to training targets: rating-file parsers and the unified formulation's target kinds, in numpy (no torch)."""
