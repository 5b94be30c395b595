"""angle-ray: AnglE-optimised text embeddings and ANCE hard-negative mining on Ray.

    from angle_ray import Embedder
    embedder = Embedder.from_pretrained("runs/quickstart/model")
    vecs = embedder.encode(["A man is playing a flute.", "A man plays the flute."])
"""

from angle_ray.version import __version__

__all__ = ["Embedder", "__version__"]


def __getattr__(name: str):
    # Embedder pulls in torch and transformers: import it on first use, so that light modules
    # (angle_ray.config, angle_ray.errors) stay light to import in Ray workers and the CLI
    if name == "Embedder":
        from angle_ray.models.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'angle_ray' has no attribute {name!r}")
