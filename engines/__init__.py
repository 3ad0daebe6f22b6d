"""mattrt.engines: one package per engine family, and the backend registry."""
