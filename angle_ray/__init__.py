"""angle-ray: AnglE-optimised text embeddings and ANCE hard-negative mining on Ray."""

__version__ = "0.1.0"
