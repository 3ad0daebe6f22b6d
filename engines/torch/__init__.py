"""mattrt.engines.torch: registered models run eagerly by PyTorch (CPU, CUDA)."""
