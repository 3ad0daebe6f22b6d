"""Against a real Triton server (2.51 from the nvidia-pytriton wheel) on loopback: the generated
CPU repository loads; alpha over HTTP and gRPC, raw, encoded and shared-memory transfer equals
the in-process pipeline on the same export within 1/255; bad requests get clear errors and the
next request is served; restricted APIs refuse requests without the key; the client retries a
vanished server a bounded number of times; a soak of 200 requests keeps the server's memory
bounded. The server log tail is printed after each test (pytest shows it for failures)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.errors import InputError
from mattrt.export.parity import generated_image
from mattrt.imageio import read_alpha
from mattrt.lazy import lazy_import
from mattrt.runtime.backends import get_backend
from mattrt.runtime.infer import InferOptions, run_inference
from mattrt.runtime.pipeline import Pipeline
from mattrt.runtime.triton_client import KEY_HEADER, ServerUnavailableError, TritonMattingClient
from mattrt.serving.repository import RECORD_FILE, RepositoryOptions, build_repository
from mattrt.serving.server import ServerError, ServerOptions, TritonServer

tritonhttp = lazy_import("tritonclient.http", probe="tritonclient")
tritongrpc = lazy_import("tritonclient.grpc", probe="tritonclient")
tritonutils = lazy_import("tritonclient.utils", probe="tritonclient")

pytestmark = [
    pytest.mark.skipif(not available("tritonserver"), reason=skip_reason("tritonserver")),
    pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient")),
]

MODEL = "shm"
MAX_PIXELS = 400 * 400  # small, so the over-the-limit request stays cheap
KEY = "test-key-" + "x" * 16


@pytest.fixture(scope="module")
def repository(serving_export, tmp_path_factory):
    return build_repository(serving_export, tmp_path_factory.mktemp("triton") / "repo",
                            RepositoryOptions(name=MODEL, max_pixels=MAX_PIXELS), log=None)


@pytest.fixture(scope="module")
def server(repository):
    triton = TritonServer(repository, ServerOptions(key=KEY, ready_timeout=240, exit_timeout=3))
    try:
        triton.start()
    except BaseException:
        triton.close()
        raise
    yield triton
    triton.close()


@pytest.fixture(autouse=True)
def show_server_log(request):
    yield
    if "server" in request.fixturenames:
        triton = request.getfixturevalue("server")
        print(f"--- tritonserver log tail ({triton.log_path}) ---\n{triton.log_tail(40)}")


@pytest.fixture(scope="module")
def reference(serving_export):
    with Pipeline.from_artifacts(serving_export, threads=1) as pipeline:
        yield lambda rgb: np.rint(pipeline.run(rgb).alpha * 255).astype(np.uint8)


def image(height: int, width: int, index: int = 0) -> np.ndarray:
    return np.ascontiguousarray(generated_image(max(height, width), index)[:height, :width])


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def client(server, **options) -> TritonMattingClient:
    protocol = options.pop("protocol", "http")
    url = server.endpoints[protocol]
    return TritonMattingClient(url, protocol=protocol, **options)


# -- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("transfer", ["raw", "encoded"])
def test_alpha_equals_the_in_process_pipeline(server, reference, protocol, transfer):
    rgb = image(150, 190)
    with client(server, protocol=protocol, transfer=transfer) as remote:
        assert remote.model == MODEL  # found through the server's statistics
        matte = remote.matte(rgb)
    assert matte.shape == (150, 190, 1) and matte.dtype == np.uint8
    expected = reference(rgb)
    assert np.abs(matte[..., 0].astype(int) - expected).max() <= 1
    assert expected.std() > 10  # a matte, not a constant


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_transfer(server, reference, protocol):
    rgb = image(130, 170, 1)
    with client(server, protocol=protocol, shm="system", api_key=KEY) as remote:
        mattes = remote.matte_many([rgb, rgb[:90, :120].copy()], concurrency=2)
    assert np.abs(mattes[0][..., 0].astype(int) - reference(rgb)).max() <= 1
    assert np.abs(mattes[1][..., 0].astype(int) - reference(rgb[:90, :120].copy())).max() <= 1


def test_rgba_output_png_files_and_the_registry_entry(server, reference, tmp_path):
    rgb = image(120, 140, 2)
    with client(server, output="rgba") as remote:
        rgba = remote.matte(rgb)
    assert rgba.shape == (120, 140, 4) and np.abs(rgba[..., 3].astype(int) - reference(rgb)).max() <= 1
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(rgb))
    with client(server, transfer="encoded", output="rgba") as remote:
        from_file = remote.matte(path)  # the file's bytes as they are; the matte back as a PNG
    assert np.array_equal(from_file, rgba)
    backend = get_backend("triton")
    assert backend.artifacts == "url" and backend.pipeline_opener is not None
    with pytest.raises(InputError, match="no stage engines in this process"):
        backend.open(server.endpoints["http"], device="cpu", precision="fp32")
    with backend.pipeline_opener(server.endpoints["grpc"], protocol="grpc") as remote_pipeline:
        assert remote_pipeline.spec.name == "shm_tiny" and remote_pipeline.describe()["backend"] == "triton"
        result = remote_pipeline.run(rgb)
        assert np.abs(np.rint(result.alpha * 255).astype(int) - reference(rgb)).max() <= 1
        many = remote_pipeline.run_many([rgb, rgb[:64, :80].copy()])
        assert [r.alpha.shape for r in many] == [(120, 140), (64, 80)]
        assert np.array_equal(many[0].alpha, result.alpha)
        # the infer command's machinery runs it as it runs an in-process Pipeline
        summary = run_inference(remote_pipeline, [str(path)], tmp_path / "out", InferOptions(progress=False), log=None)
    assert summary["processed"] == 1 and not summary["failed"]
    written = np.rint(read_alpha(tmp_path / "out" / "photo_alpha.png") * 255)  # float in [0, 1]
    assert np.abs(written.astype(int) - reference(rgb)).max() <= 1


def test_infer_command_through_the_server(server, reference, tmp_path, capsys, monkeypatch):
    """`mattrt infer --backend triton --url`: the same outputs and summary as an in-process run."""
    rgb = image(90, 110, 3)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "a.png")
    monkeypatch.setenv("MATTRT_TRITON_KEY", KEY)
    for protocol in ("http", "grpc"):
        out = tmp_path / f"out-{protocol}"
        code = main(["infer", str(tmp_path / "in"), "--out", str(out), "--backend", "triton", "--url",
                     server.endpoints[protocol], "--protocol", protocol, "--transfer", "encoded", "--no-progress"])
        assert code == 0, capsys.readouterr().err
        written = np.rint(read_alpha(out / "a_alpha.png") * 255).astype(int)
        assert np.abs(written - reference(rgb)).max() <= 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["pipeline"]["backend"] == "triton" and summary["processed"] == 1
    assert main(["infer", str(tmp_path / "in"), "--out", str(tmp_path / "x"), "--backend", "triton",
                 "--url", server.endpoints["http"], "--tile", "64"]) == 1
    assert "tiles on the server (its repository fixed these); drop --tile" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "in"), "--out", str(tmp_path / "y"), "--url", server.endpoints["http"],
                 "--model", "shm_tiny"]) == 1
    assert "use it with --backend triton" in capsys.readouterr().err


# -- bad requests ---------------------------------------------------------------------------------
def raw_infer(server, inputs, parameters=None):
    connection = tritonhttp.InferenceServerClient(server.endpoints["http"])
    try:
        return connection.infer(MODEL, inputs, parameters=parameters)
    finally:
        connection.close()


def http_input(name, array, datatype=None):
    tensor = tritonhttp.InferInput(name, list(array.shape), datatype or tritonutils.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def test_malformed_tensors_get_errors_and_the_next_request_is_served(server, reference):
    good = image(64, 72)
    cases = [
        ([http_input("IMAGE", good.astype(np.float32))], "FP32"),  # wrong dtype
        ([http_input("IMAGE", good[..., 0].copy())], "shape"),  # wrong rank
        ([http_input("IMAGE", np.zeros((0, 0, 3), np.uint8))], "too small"),
        ([http_input("IMAGE", np.zeros((1, 1, 3), np.uint8))], "too small"),
        ([http_input("IMAGE", np.zeros((401, 401, 3), np.uint8))], "megapixels exceeds"),
        ([http_input("IMAGE_ENCODED", np.frombuffer(b"\x89PNG\r\n\x1a\nbroken", np.uint8))], "corrupt|not a readable"),
        ([http_input("IMAGE_ENCODED", np.frombuffer(png_bytes(np.zeros((500, 500, 3), np.uint8)), np.uint8))],
         "megapixels exceeds"),
        ([http_input("IMAGE", good), http_input("IMAGE_ENCODED", np.frombuffer(png_bytes(good), np.uint8))],
         "exactly one of"),
        ([], "exactly one of|expected"),
    ]
    for inputs, message in cases:
        with pytest.raises(tritonutils.InferenceServerException) as caught:
            raw_infer(server, inputs)
        assert caught.value.status() == "400", caught.value
        assert re.search(message, caught.value.message()), caught.value.message()
        # the server answers the next good request as usual
        answer = raw_infer(server, [http_input("IMAGE", good)])
        assert np.abs(answer.as_numpy("MATTE")[..., 0].astype(int) - reference(good)).max() <= 1


@pytest.mark.parametrize("parameters, message", [
    ({"overlap": -1}, r"overlap must lie in \[0, "),
    ({"overlap": 10_000}, r"overlap must lie in \[0, "),
    ({"batch": 0}, r"batch must lie in \[1, 4\]"),
    ({"batch": 5}, r"batch must lie in \[1, 4\]"),
    ({"tile_size": 32}, r"tile_size must lie in \[64, 64\]"),
    ({"output": "cutout"}, "output must be one of alpha, rgba"),
    ({"overlap": "wide"}, "overlap must be an integer"),
    ({"colour": 1}, "unknown parameter"),
])
def test_out_of_range_parameters_are_invalid_arguments(server, parameters, message):
    good = image(64, 72)
    with client(server, protocol="grpc") as remote:
        remote.parameters.update(parameters)
        with pytest.raises(InputError, match=message):
            remote.matte(good)
        remote.parameters.clear()
        assert remote.matte(good).shape == (64, 72, 1)


# -- security -------------------------------------------------------------------------------------
def http_status(server, method, path, headers=None, body=b"{}"):
    request = urllib.request.Request(f"http://{server.endpoints['http']}{path}", method=method,
                                     data=body if method == "POST" else None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_restricted_apis_need_the_key_and_inference_does_not(server):
    key = server.headers("http")
    assert key == {KEY_HEADER: KEY}
    for method, path in [("POST", "/v2/repository/index"), ("GET", "/v2/logging"), ("GET", "/v2/trace/setting"),
                         ("GET", "/v2/systemsharedmemory/status"), ("POST", f"/v2/repository/models/{MODEL}/unload")]:
        status, body = http_status(server, method, path)
        assert status in (401, 403), (path, status, body)
        assert status != 200
    status, body = http_status(server, "POST", "/v2/repository/index", key)
    assert status == 200 and MODEL in body
    # model control is off: even with the key nothing is unloaded
    status, body = http_status(server, "POST", f"/v2/repository/models/{MODEL}/unload", key)
    assert status != 200 and "not allowed" in body.lower()
    grpc_client = tritongrpc.InferenceServerClient(server.endpoints["grpc"])
    with pytest.raises(tritonutils.InferenceServerException):
        grpc_client.get_model_repository_index()
    assert grpc_client.get_model_repository_index(headers=server.headers("grpc")).models
    with pytest.raises(tritonutils.InferenceServerException):
        grpc_client.register_system_shared_memory("intruder", "/intruder", 64)
    grpc_client.close()
    with client(server) as remote:  # no key
        assert remote.matte(image(64, 64)).shape == (64, 64, 1)
    assert http_status(server, "GET", f"/v2/models/{MODEL}/ready")[0] == 200
    # bound to loopback only: 127.0.0.1 as /proc/net/tcp writes it, or IPv4-mapped in tcp6 (gRPC)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    for kind in ("http", "grpc", "metrics"):
        addresses = listening_addresses(server.ports[kind])
        assert addresses and addresses <= loopback, (kind, addresses)


# -- soak -----------------------------------------------------------------------------------------
def test_soak_200_requests_4_concurrent_mixed_sizes_memory_bounded(server):
    rng = random.Random(7)
    sizes = [(rng.randint(24, 128), rng.randint(24, 128)) for _ in range(200)]
    images = [image(h, w, i % 3) for i, (h, w) in enumerate(sizes)]
    with client(server, protocol="grpc", concurrency=4) as remote:
        remote.matte_many(images[:20])  # warm-up: stub shared memory and onnxruntime arenas settle
        before = server.memory()
        started = time.perf_counter()
        mattes = remote.matte_many(images)
        seconds = time.perf_counter() - started
        after = server.memory()
    assert [m.shape[:2] for m in mattes] == sizes  # every image answered, in order
    growth = {pid: after.get(pid, 0) - rss for pid, rss in before.items()}
    total = sum(growth.values())
    print(f"soak: 200 requests in {seconds:.1f} s; RSS before {sum(before.values()) / 2**20:.0f} MiB, "
          f"growth {total / 2**20:.1f} MiB over {len(before)} processes: "
          + ", ".join(f"{pid}: {g / 2**20:+.1f}" for pid, g in growth.items()))
    assert set(after) == set(before)  # no stub process died or was replaced
    assert total < 64 * 2**20  # the bound: 64 MiB for the server and all its stubs together


# -- lifecycle: retries, serve, failures ----------------------------------------------------------
def test_serve_prints_endpoints_stops_on_sigterm_mid_run_and_client_retries_are_bounded(repository, tmp_path):
    """`mattrt serve` in a subprocess: ready line without the key; SIGTERM while a client runs
    many images: serve exits 0, the client fails clearly after its retries (nothing hangs, no image
    silently dropped); a server back on the same ports within the retries serves the next image."""
    regions_before = python_backend_regions()
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MATTRT_TRITON_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "mattrt.cli", "serve", str(repository), "--key-file", str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    restarted = None
    remote = None
    try:
        line = process.stdout.readline()
        info = json.loads(line)
        assert info["status"] == "ready" and info["http"].startswith("127.0.0.1:"), line
        assert KEY not in line and info["key_from"] == str(key_file)
        with TritonMattingClient(info["grpc"], protocol="grpc") as grpc_remote:
            assert grpc_remote.matte(image(64, 64)).shape == (64, 64, 1)
        # Enough work that the server cannot finish it in the second before SIGTERM, even when idle.
        images = [image(120 + i % 40, 150, i % 3) for i in range(400)]
        errors: list[BaseException] = []
        results: list = []
        remote = TritonMattingClient(info["http"], concurrency=2, retries=2, retry_wait=0.2, timeout=30)

        def run():
            try:
                results.append(remote.matte_many(images))
            except BaseException as exc:  # recorded for the assertions below
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert '"stopped"' in process.stderr.read()
        worker.join(timeout=120)
        assert not worker.is_alive(), "the client hung after the server stopped"
        assert not results and len(errors) == 1
        assert isinstance(errors[0], ServerUnavailableError)
        assert "after 3 attempts" in str(errors[0]) and "image #" in str(errors[0])
        # a server back on the same ports within the retries serves the image
        ports = {kind: int(info[kind].rsplit(":", 1)[1]) for kind in ("http", "grpc", "metrics")}
        restarted = TritonServer(repository, ServerOptions(key=KEY, ready_timeout=240, exit_timeout=3,
                                                           http_port=ports["http"], grpc_port=ports["grpc"],
                                                           metrics_port=ports["metrics"]))
        starter = threading.Thread(target=restarted.start)
        starter.start()
        remote.retries, remote.retry_wait = 9, 0.5
        assert remote.matte(image(64, 80)).shape == (64, 80, 1)
        starter.join(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if remote is not None:
            remote.close()
        if restarted is not None:
            restarted.close()
    # the stopped and the restarted server left no Python-backend shared memory behind
    assert python_backend_regions() == regions_before


def python_backend_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")}


def test_busy_ports_and_models_that_fail_to_load_are_clear_errors(repository, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"http port {port} on 127.0.0.1 is in use"):
            TritonServer(repository, ServerOptions(key=KEY, http_port=port)).start()
    broken = tmp_path / "broken"
    shutil.copytree(repository, broken)
    (broken / MODEL / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    triton = TritonServer(broken, ServerOptions(key=KEY, ready_timeout=120))
    started = time.perf_counter()
    with pytest.raises(ServerError, match="(?s)before it was ready.*this model cannot load"):
        triton.start()
    assert time.perf_counter() - started < 120 and not triton.running
    triton.close()
    stale = tmp_path / "stale"
    shutil.copytree(repository, stale)
    record = json.loads((stale / MODEL / RECORD_FILE).read_text())
    record["mattrt_version"] = "0.0.1"
    (stale / MODEL / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(InputError, match="generated by mattrt 0.0.1"):
        TritonServer(stale, ServerOptions(key=KEY)).start()
