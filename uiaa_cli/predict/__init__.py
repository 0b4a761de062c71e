"""Scoring at any scale: what the inputs are (files, folders, lists, tables, tar shards, caches) and the streaming
pipeline from decoded batches through an engine to an output."""
