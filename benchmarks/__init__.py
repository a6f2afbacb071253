"""Ratio benchmarks: each runs its baseline side by side in the same process."""
