"""Jalapeño: the memory-centric streaming inference runtime.

Knows torch, tensors and budgets; knows nothing of plans, search or RL (DESIGN.md, layer 1).
Importing it never initialises CUDA or NVML.
"""
