"""mattrt.runtime"""
