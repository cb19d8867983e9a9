"""Evaluation libraries: the inference engine and its KV cache, the grid of cells, cell identity and store, scoring."""
