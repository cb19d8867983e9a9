"""pausetune: a reproducible pipeline that tests pause-tuning (arXiv 2502.20405) on long-context retrieval."""

__version__ = "0.1.0"
