"""mattrt.export"""
