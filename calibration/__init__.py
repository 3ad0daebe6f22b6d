"""mattrt.calibration"""
