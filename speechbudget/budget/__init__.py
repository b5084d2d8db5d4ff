"""Compute accounting: FLOP counts, device peaks, scaling laws, the planner."""
