"""mattrt.engines.triton: the client of a Triton server that runs the whole pipeline."""
