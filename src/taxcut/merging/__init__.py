"""Averaging two checkpoints: layer detection, ratio resolution, pure math, planning and the streaming engine."""
