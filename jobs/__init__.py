"""mattrt.jobs: what runs over many images: infer (one process), bench, demo."""
