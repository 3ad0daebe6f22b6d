"""The Triton client's own argument handling and retry bound, without a server (nothing listens
on the port used here); its work against a real server is in test_serving_triton.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.engines.backends import get_backend
from mattrt.engines.triton.client import ServerUnavailableError, TritonMattingClient, key_headers
from mattrt.errors import InputError
from mattrt.serving.processes import free_port

pytestmark = pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))


@pytest.mark.parametrize("options, message", [
    ({"protocol": "rest"}, "unknown protocol 'rest'"),
    ({"transfer": "zip"}, "unknown transfer 'zip'"),
    ({"shm": "cuda"}, "unknown shared memory mode 'cuda'"),
    ({"shm": "system"}, "needs the server's API key"),
    ({"concurrency": 0}, "concurrency must be an integer of at least 1"),
    ({"retries": -1}, "retries must be an integer of at least 0"),
    ({"output": "composite"}, "unknown output 'composite'"),
])
def test_bad_client_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        TritonMattingClient("127.0.0.1:1", model="m", **options)


def test_bad_images_are_refused_before_any_request():
    client = TritonMattingClient("127.0.0.1:1", model="m")
    with pytest.raises(InputError, match="expected H x W x 3 uint8 or uint16"):
        client.matte(np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="encoded bytes need transfer='encoded'"):
        client.matte(b"\x89PNG")
    with pytest.raises(InputError, match="no such file"):
        client.matte("/nonexistent/photo.png")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_absent_server_fails_after_the_bounded_retries(protocol):
    port = free_port()
    client = TritonMattingClient(f"127.0.0.1:{port}", model="m", protocol=protocol, retries=2, retry_wait=0.05,
                                 timeout=5)
    with pytest.raises(ServerUnavailableError, match="after 3 attempts.*image #7 was not processed"):
        client.matte(np.zeros((16, 16, 3), np.uint8), index=7)
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_discovery_from_an_absent_server_fails_after_the_bounded_retries(protocol):
    """Discovery (no model named) retries on a fresh connection each time, as inference does
    (it once retried the connection it had just closed: "connection pool closed")."""
    with pytest.raises(ServerUnavailableError, match="did not answer for the list of models after 3 attempts"):
        TritonMattingClient(f"127.0.0.1:{free_port()}", protocol=protocol, retries=2, retry_wait=0)


def test_the_infer_command_names_an_unreachable_server(tmp_path, capsys):
    photo = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    url = f"127.0.0.1:{free_port()}"
    assert main(["infer", str(photo), "--out", str(tmp_path / "out"), "--backend", "triton", "--url", url]) == 1
    err = capsys.readouterr().err
    assert f"Triton at {url} (http) did not answer for the list of models after 4 attempts" in err, err
    assert "connection pool closed" not in err and "Traceback" not in err


def test_registry_entry_and_key_headers():
    backend = get_backend("triton")
    assert backend.artifacts == "url" and backend.probes == ("tritonclient",)
    with pytest.raises(InputError, match="HOST:PORT"):
        backend.pipeline_opener("http://host/path")
    with pytest.raises(InputError, match="takes no --threads"):
        backend.open("127.0.0.1:1", device="cpu", precision="fp32", threads=2)
    assert key_headers("http", "k") == {"mattrt-key": "k"}
    assert key_headers("grpc", "k") == {"triton-grpc-protocol-mattrt-key": "k"}
    assert key_headers("grpc", None) == {}
