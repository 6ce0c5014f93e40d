"""Measuring loaded models: memory trackers, the benchmark protocol, quality (perplexity, KL, top-1), the comparison sweep and its results store, and the environment each result records."""
