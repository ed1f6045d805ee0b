"""moeframe: a GPU inference runtime for Mixture-of-Experts models, built for ablation studies."""

from moeframe.api import Engine, GenerateOutput, SamplingParams

__all__ = ["Engine", "GenerateOutput", "SamplingParams"]
