"""The factorized AR transformer (class-conditional, next-sub-token prediction) and its generation loop."""

from magvit2.nn.ar.generation import DecodeStep, Generated, KVCache, generate
from magvit2.nn.ar.transformer import AR_PRESETS, ARConfig, ARLogits, ARTransformer

__all__ = ["AR_PRESETS", "ARConfig", "ARLogits", "ARTransformer", "DecodeStep", "Generated", "KVCache", "generate"]
