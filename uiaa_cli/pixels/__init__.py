"""Pixels: decoding image files safely, decoding batches in worker processes, the HDF5 image cache, and
perceptual-hash dedupe (no torch)."""
