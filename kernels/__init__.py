"""mattrt.kernels"""
