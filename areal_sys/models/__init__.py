"""Model builders: the built-in tiny CPU model (`areal_sys.models.tiny`).

Submodules import torch/transformers lazily, inside their functions.
"""
