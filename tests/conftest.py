"""Suite-wide settings.

Most tests run tiny networks (many small convolutions): intra-op threads only contend for the
two cores there, so torch runs single-threaded in the test process, and the CLI's default thread
count (the cores this process may use) is pinned to 1 the same way for commands run in-process.
The artifact cache lives in one temporary folder per test session, never the user's cache.
"""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def isolated_artifact_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mattrt-cache")
    previous = os.environ.get("MATTRT_CACHE")
    os.environ["MATTRT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MATTRT_CACHE", None)
    else:
        os.environ["MATTRT_CACHE"] = previous


@pytest.fixture(autouse=True)
def single_thread_default(monkeypatch):
    from mattrt.runtime import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 1)
