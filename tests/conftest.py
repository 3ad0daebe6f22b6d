"""Suite-wide settings.

Most tests run tiny networks (many small convolutions): intra-op threads only contend for the
two cores there, so torch runs single-threaded in the test process.
"""

import pytest
import torch

from mattrt.export.exporter import export_model
from mattrt.models import create_model
from mattrt.runtime.diagnostics import calibrated_random_weights

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def serving_export(tmp_path_factory):
    """shm_tiny with calibrated random weights (mattes far from constant), exported once per
    session for the serving tests (max batch 4)."""
    directory = tmp_path_factory.mktemp("serving") / "shm_tiny"
    export_model(calibrated_random_weights(create_model("shm_tiny"), seed=1), directory, max_batch=4,
                 simplify=False, log=None)
    return directory
