"""`mattrt batch`: one matting job over many images on Ray Data, on this machine or a Ray cluster.

Modules: job.py (the driver: plan, connect, probe, resume, run, record), inputs.py (INPUT specs:
files, folders, globs, list files, URIs; output names; the reader workers use), manifest.py (the
Parquet manifest and resume), worker.py (what runs in Ray's workers: the per-node probe and the
actor holding one Pipeline), cluster.py (the embedded Ray or a cluster by address; Ray Data's
settings). Ray is an optional extra (`pip install 'mattrt[batch]'`), bound lazily.
"""

from mattrt.jobs.batch.job import BatchOptions, run_batch

__all__ = ["BatchOptions", "run_batch"]
