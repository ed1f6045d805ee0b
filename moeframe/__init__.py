"""moeframe: an MoE inference runtime for ablation studies."""
