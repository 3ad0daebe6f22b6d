"""mattrt.deploy: the deployment chain (source -> graphs -> precision -> engines -> Pipeline) and the artifact cache."""
