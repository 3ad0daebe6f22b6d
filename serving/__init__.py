"""mattrt.serving"""
