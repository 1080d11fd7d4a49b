"""Benchmark protocols: query building, answer extraction, normalisation and scoring."""
