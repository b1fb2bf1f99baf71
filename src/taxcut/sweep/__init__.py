"""Sweeping candidates: in-memory weight swaps, resumable results, the Pareto front and its report."""
