"""Training MoE checkpoints here, with transformers' own model classes, on text every machine has.

No checkpoint can be downloaded where moeframe runs, so the quality figures of
its studies come from models trained by ``tools/train_moe.py``: ``corpus``
collects and splits the text, ``recipes`` names what to train, ``trainer``
runs the loop, ``report`` writes the log, the loss curve and the model card.
"""
