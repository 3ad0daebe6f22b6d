"""mattrt.data: synthetic matting scenes with exact ground truth."""
