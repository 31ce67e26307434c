"""Text generation: sampling settings (sampling.py), batched KV-cached generation (generate.py) and its
compiled fixed-shape decode step (decode_step.py). inference.py is the command line on top."""
from machinery.generation.generate import GenerationConfig, generate, generate_ids
from machinery.generation.sampling import SamplingConfig

__all__ = ["GenerationConfig", "SamplingConfig", "generate", "generate_ids"]
