"""Against a real Triton server (2.51 from the nvidia-pytriton wheel) on loopback: the generated
CPU repository loads; alpha over HTTP and gRPC, raw, encoded and shared-memory transfer equals
the in-process pipeline on the same export within 1/255; bad requests get clear errors and the
next request is served; restricted APIs refuse requests without the key; the client retries a
vanished server a bounded number of times; a soak of 200 requests keeps the server's memory
bounded. Supervised (`mattrt serve`): kill -9 of a stub, SIGSTOP of one, SIGKILL of the server's
process group, the nested-JSON request that crashes Triton 2.51 and an oversized request each end
with the server serving again within 30 s, readiness false meanwhile, no region left, memory
back to its level; nothing of it is readable by another user; a strict server refuses requests
without the key and gives up after its restarts. The server log tail is printed after each test
(pytest shows it for failures)."""

from __future__ import annotations

import http.client
import io
import json
import mmap
import os
import random
import re
import shutil
import signal
import socket
import stat
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
from mattrt.deploy.plan import export_pipeline
from mattrt.engines.backends import get_backend
from mattrt.engines.triton.client import KEY_HEADER, ServerUnavailableError, TritonMattingClient, TritonRequestError
from mattrt.errors import InputError, MissingDependencyError
from mattrt.export.parity import generated_image
from mattrt.imageio import read_alpha
from mattrt.jobs.infer import InferOptions, run_inference
from mattrt.lazy import lazy_import
from mattrt.serving.processes import (
    SHM_PREFIX_BASE,
    classify_exit,
    process_tree,
    python_backend_regions,
    rss_bytes,
    stub_processes,
    sweep_dead_starters,
)
from mattrt.serving.repository import RECORD_FILE, RepositoryOptions, build_repository
from mattrt.serving.server import ServerError, ServerOptions, TritonServer
from mattrt.serving.supervisor import RestartPolicy, SupervisorOptions

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
    triton = TritonServer(repository, ServerOptions(key=KEY, ready_timeout=240, drain_seconds=3))
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
    with export_pipeline(serving_export, threads=1) as pipeline:
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
    # strings that are integers only to str.isdigit() or to a loose reading: never converted
    ({"overlap": "--5"}, r"overlap must be an integer in \[0, \d+\] \(ASCII digits\), got '--5'"),
    ({"overlap": "\u00b2"}, r"overlap must be an integer .*got '\u00b2'"),  # superscript two
    ({"overlap": "\u0663"}, r"overlap must be an integer .*got '\u0663'"),  # Arabic-Indic three
    ({"tile_size": "\u2076\u2074"}, "tile_size must be an integer"),  # superscript 64
    ({"batch": "\u2460"}, "batch must be an integer"),  # circled one
    ({"batch": "1.0"}, "batch must be an integer"),
    ({"overlap": "9" * 40}, r"overlap must lie in \[0, \d+\], got 9{24}\.\.\."),
])
def test_out_of_range_parameters_are_invalid_arguments(server, parameters, message):
    good = image(64, 72)
    with client(server, protocol="grpc") as remote:
        remote.parameters.update(parameters)
        with pytest.raises(InputError, match=message):
            remote.matte(good)
        remote.parameters.clear()
        assert remote.matte(good).shape == (64, 72, 1)


@pytest.mark.parametrize("value", ["--5", "\u00b2", "\u0663", "-", "", "1e3", "9" * 5000])
def test_malformed_parameter_strings_over_http_json_are_400s(server, value):
    with pytest.raises(tritonutils.InferenceServerException) as caught:
        raw_infer(server, [http_input("IMAGE", image(64, 72))], parameters={"overlap": value})
    assert caught.value.status() == "400", caught.value
    assert re.search(r"parameter overlap must (be an integer|lie in)", caught.value.message()), caught.value.message()


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


# -- lifecycle: stopping, retries, serve, failures -------------------------------------------------
HOLD_ENV = "MATTRT_TEST_HOLD"
# A detail stage that waits while the test's hold file exists: the test knows, by the `entered`
# file, that a request is inside the model, and decides when it goes on (`release`).
HELD_STAGE_SHIM = '''
import os
import sys
import time

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

from mattrt.serving.triton_models import StageModel


class TritonPythonModel(StageModel):
    def execute(self, requests):
        folder = os.environ.get("MATTRT_TEST_HOLD")
        if folder and os.path.exists(os.path.join(folder, "hold")):
            open(os.path.join(folder, "entered"), "w").close()
            while not os.path.exists(os.path.join(folder, "release")):
                time.sleep(0.01)
        return super().execute(requests)
'''


class Hold:
    """The test's side of HELD_STAGE_SHIM."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir()
        (folder / "hold").touch()

    def wait_entered(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not (self.folder / "entered").exists():
            assert time.monotonic() < deadline, "no request reached the held detail stage"
            time.sleep(0.01)

    def release(self) -> None:
        (self.folder / "release").touch()


@pytest.fixture
def held_repository(repository, tmp_path):
    copy = tmp_path / "held-repo"
    shutil.copytree(repository, copy)
    (copy / f"{MODEL}_detail" / "1" / "model.py").write_text(HELD_STAGE_SHIM)
    return copy


def start_serve(repository: Path, tmp_path: Path, hold: Hold, *extra: str) -> tuple[subprocess.Popen, dict]:
    """`mattrt serve` in a subprocess, its ready line parsed."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env[HOLD_ENV] = str(hold.folder)
    env.pop("MATTRT_TRITON_KEY", None)
    # No canary: the held detail stage would hold it too (the supervision tests below run canaries).
    process = subprocess.Popen(
        [sys.executable, "-m", "mattrt.cli", "serve", str(repository), "--key-file", str(key_file),
         "--canary-seconds", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = process.stdout.readline()
    try:
        info = json.loads(line)
    except ValueError:
        process.kill()
        raise AssertionError(f"no ready line: {line!r}; stderr: {process.communicate(timeout=60)[1]}") from None
    assert info["status"] == "ready" and info["http"].startswith("127.0.0.1:"), line
    assert KEY not in line and info["key_from"] == str(key_file)
    return process, info


class Outcome:
    """The result or the exception of a call made in a thread."""

    def __init__(self, function, *args):
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(function, *args))
        self.thread.start()

    def _run(self, function, *args):
        try:
            self.value = function(*args)
        except BaseException as exc:  # recorded for the assertions
            self.error = exc

    def wait(self, timeout: float = 120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call hung"
        return self


def test_sigterm_refuses_new_requests_finishes_those_in_flight_and_a_restart_serves(held_repository, reference,
                                                                                     tmp_path):
    """The stopping promise (serving/server.py), by events: a request held inside the detail
    stage when SIGTERM arrives is answered in full; from the "stopping" line on, new requests are
    refused with "server is stopping" over gRPC and HTTP, the client retries a bounded number of
    times and names the image; serve exits 0 and says "stopped"; a server started again on the
    same ports serves the image a retrying client still holds; no shared memory is left."""
    hold = Hold(tmp_path / "hold")
    process, info = start_serve(held_repository, tmp_path, hold, "--drain-seconds", "120")
    regions = python_backend_regions(process.pid)
    restarted = None
    clients: list[TritonMattingClient] = []
    try:
        in_flight_image = image(120, 150, 1)
        held = TritonMattingClient(info["grpc"], protocol="grpc", retries=0, timeout=300)
        clients.append(held)
        in_flight = Outcome(held.matte, in_flight_image)
        hold.wait_entered()
        regions |= python_backend_regions(process.pid)
        grpc_after = TritonMattingClient(info["grpc"], protocol="grpc", model=MODEL, retries=0)
        clients.append(grpc_after)

        process.send_signal(signal.SIGTERM)
        stopping = json.loads(process.stdout.readline())
        assert stopping["status"] == "stopping" and stopping["drain_seconds"] == 120, stopping
        assert stopping["http_ready"] is False
        # HTTP readiness is off from the signal on (the listener is closed)
        assert http_ready_code(info["http"]) != 200

        # a request that starts now is refused at once with the stopping answer (gRPC reaches the model)
        with pytest.raises(ServerUnavailableError, match=r"(?s)after 1 attempts.*server is stopping.*image #5"):
            grpc_after.matte(image(64, 64), index=5)
        # the retrying client tries a bounded number of times, then names the image
        retrying = TritonMattingClient(info["http"], model=MODEL, retries=2, retry_wait=0.05, timeout=30)
        clients.append(retrying)
        with pytest.raises(ServerUnavailableError, match=r"after 3 attempts.*image #9 was not processed"):
            retrying.matte(image(64, 64), index=9)
        assert process.poll() is None and in_flight.thread.is_alive()  # still draining the held request

        hold.release()
        in_flight.wait()
        assert in_flight.error is None, in_flight.error
        assert np.abs(in_flight.value[..., 0].astype(int) - reference(in_flight_image)).max() <= 1
        for remote in clients:
            remote.close()  # Triton also waits for idle client connections
        assert process.wait(timeout=180) == 0
        ended = json.loads(process.stderr.read().strip().splitlines()[-1])
        assert ended["status"] == "stopped" and ended["exit_code"] in (0, 1), ended

        # a server back on the same ports within the retries serves the image
        ports = {kind: int(info[kind].rsplit(":", 1)[1]) for kind in ("http", "grpc", "metrics")}
        restarted = TritonServer(held_repository, ServerOptions(key=KEY, ready_timeout=240, drain_seconds=3,
                                                                http_port=ports["http"], grpc_port=ports["grpc"],
                                                                metrics_port=ports["metrics"]))
        comeback = TritonMattingClient(info["http"], model=MODEL, retries=12, retry_wait=0.5, timeout=60)
        clients.append(comeback)
        answer = Outcome(comeback.matte, image(64, 80))
        restarted.start()
        assert answer.wait(timeout=300).error is None, answer.error
        assert answer.value.shape == (64, 80, 1)
        regions |= python_backend_regions(restarted.process.pid)
    finally:
        hold.release()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for remote in clients:
            remote.close()
        if restarted is not None:
            restarted.close()
    assert regions and not [r for r in regions if r.exists()]  # the stopped and the restarted server left none


def test_a_server_that_crashes_while_stopping_is_reported_as_a_crash(held_repository, tmp_path):
    """SIGSEGV to tritonserver while it drains a held request: serve reports the crash (status,
    signal) and exits 1; the request in flight fails with a clear error; nothing is left behind."""
    hold = Hold(tmp_path / "hold")
    process, info = start_serve(held_repository, tmp_path, hold, "--drain-seconds", "120")
    held = TritonMattingClient(info["grpc"], protocol="grpc", retries=0, timeout=300)
    try:
        in_flight = Outcome(lambda: held.matte(image(64, 64), index=3))
        hold.wait_entered()
        regions = python_backend_regions(process.pid)
        tritonserver = [pid for pid in process_tree(process.pid)
                        if Path(f"/proc/{pid}/exe").resolve().name == "tritonserver"]
        assert len(tritonserver) == 1, tritonserver
        process.send_signal(signal.SIGTERM)
        assert json.loads(process.stdout.readline())["status"] == "stopping"
        os.kill(tritonserver[0], signal.SIGSEGV)
        assert process.wait(timeout=120) == 1
        err = process.stderr.read()
        ended = json.loads(next(line for line in err.splitlines() if line.startswith("{")))
        assert ended["status"] == "crashed" and ended["exit_code"] == -signal.SIGSEGV, ended
        assert "crashed while stopping: ended by SIGSEGV" in err and "mattrt serve: error:" in err
        in_flight.wait()
        assert isinstance(in_flight.error, ServerUnavailableError) and "image #3" in str(in_flight.error)
    finally:
        hold.release()
        held.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert regions and not [r for r in regions if r.exists()]  # a crashed server's regions are removed too


def test_exit_statuses_are_classified_as_they_happened():
    """classify_exit on the statuses and log lines Triton 2.51 gives (seen in the tests above and probes)."""
    timeout_log = ("Timeout 1: Found 2 HTTP service connections\n"
                   "Timeout 0: Found 0 model versions that have in-flight inferences\n"
                   "failed to stop server: Internal - Exit timeout expired. Exiting immediately.")
    assert classify_exit(0, "", 30, stopping=True).outcome == "stopped"
    assert classify_exit(1, timeout_log, 30, stopping=True).clean
    cut = classify_exit(1, timeout_log.replace("Found 0 model", "Found 2 model"), 30, stopping=True)
    assert cut.outcome == "drain-expired" and "2 model version(s)" in cut.message and not cut.clean
    assert classify_exit(-11, "", 30, stopping=True).message.endswith("ended by SIGSEGV (exit status -11)")
    assert classify_exit(1, "", 30, stopping=False).outcome == "crashed"
    assert classify_exit(0, "", 30, stopping=False).outcome == "crashed"  # nobody asked it to stop
    assert classify_exit(None, "", 30, stopping=True, killed=True).outcome == "killed"


def test_restart_back_off_doubles_is_capped_forgets_old_failures_and_gives_up():
    now = [0.0]
    policy = RestartPolicy(SupervisorOptions(restart_delay=1, restart_delay_max=5, max_restarts=4, restart_window=100),
                           clock=lambda: now[0])
    assert [policy.next_delay() for _ in range(4)] == [1, 2, 4, 5]
    assert policy.next_delay() is None  # a fifth failure within the window: give up
    now[0] = 150.0  # the window has passed: back to the first delay
    assert policy.next_delay() == 1


def http_ready_code(endpoint: str):
    try:
        with urllib.request.urlopen(f"http://{endpoint}/v2/health/ready", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError) as error:
        return type(error).__name__


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
    triton = TritonServer(broken, ServerOptions(key=KEY, ready_timeout=600))
    # "before it was ready": the server's exit was seen, not the ready timeout running out
    with pytest.raises(ServerError, match="(?s)before it was ready.*this model cannot load"):
        triton.start()
    assert not triton.running
    triton.close()
    stale = tmp_path / "stale"
    shutil.copytree(repository, stale)
    record = json.loads((stale / MODEL / RECORD_FILE).read_text())
    record["mattrt_version"] = "0.0.1"
    (stale / MODEL / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(InputError, match="generated by mattrt 0.0.1"):
        TritonServer(stale, ServerOptions(key=KEY)).start()


def test_a_gpu_repository_is_refused_before_start_by_a_server_without_the_tensorrt_backend(serving_export, tmp_path,
                                                                                           capsys):
    from test_serving_repository import write_plans

    plans = write_plans(tmp_path / "plans", serving_export)
    repo = build_repository(serving_export, tmp_path / "repo", RepositoryOptions(target="gpu", plans=plans), log=None)
    triton = TritonServer(repo, ServerOptions(key=KEY))
    with pytest.raises(MissingDependencyError, match="lacks the tensorrt backend"):
        triton.start()
    assert triton.process is None and triton.workdir is None  # nothing started, nothing to clean up
    assert main(["serve", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mattrt serve: error: the tritonserver at ") and "Traceback" not in err
    assert "shm_tiny_detail" in err and "NVIDIA's Triton container" in err and "--tritonserver PATH" in err


# -- supervision: faults that must not take serving down (serving/supervisor.py) ------------------
class Serve:
    """`mattrt serve` in a subprocess, its JSON lines collected as they come (events to wait for)."""

    def __init__(self, repository: Path, *extra: str, key_file: Path | None = None):
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        env.pop("MATTRT_TRITON_KEY", None)
        command = [sys.executable, "-m", "mattrt.cli", "serve", str(repository), *extra]
        if key_file is not None:
            command += ["--key-file", str(key_file)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True).start()
        self.info = self.wait("ready", 0, timeout=300)

    def _read(self, stream, json_lines: bool) -> None:
        for line in stream:
            with self.changed:
                (self.lines if json_lines else self.stderr).append(json.loads(line) if json_lines else line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait(self, status: str, after: int, timeout: float = 120) -> dict:
        """The first line with this status at index >= after (fails if serve exits first)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines[after:] if line["status"] == status), None)
                if found is not None:
                    return found
                assert self.process.poll() is None or status == "failed", \
                    f"serve exited ({self.process.returncode}) before {status!r}: {self.lines}\n{''.join(self.stderr)}"
                assert time.monotonic() < deadline, f"no {status!r} line after {timeout} s: {self.lines}"
                self.changed.wait(0.5)

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://{self.info['status_endpoint']}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def status(self) -> dict:
        return json.loads(self.get("/status")[1])

    def until_ready_is(self, code: int, timeout: float = 60) -> float:
        """Polls the status endpoint's /ready (no sleep-then-assert: the state changes for seconds)."""
        started = time.monotonic()
        while self.get("/ready")[0] != code:
            assert time.monotonic() - started < timeout, f"/ready never answered {code}: {self.lines}"
            time.sleep(0.02)
        return time.monotonic() - started

    def memory(self) -> tuple[int, int, int]:
        """(RSS of tritonserver and its stubs, bytes its shared-memory regions hold, its pid)."""
        state = self.status()
        return (sum(rss_bytes(pid) for pid in process_tree(state["server_pid"])), state["shm_bytes"],
                state["server_pid"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        # the logs of the servers that ended here, kept by the supervisor in its folder
        for line in self.lines:
            log = (line.get("previous_exit") or {}).get("log")
            if line["status"] == "restarting" and log:
                shutil.rmtree(Path(log).parent, ignore_errors=True)


def served_within(serve: Serve, started: float, target: float = 30.0, **options) -> float:
    """Seconds from `started` (the fault) until a good request is answered; at most `target`."""
    rgb = image(40, 48)
    while True:
        remote = TritonMattingClient(serve.info["grpc"], protocol="grpc", model=MODEL, retries=0, timeout=10, **options)
        try:
            assert remote.matte(rgb).shape == (40, 48, 1)
            served = time.monotonic() - started
            assert served < target, f"served only {served:.1f} s after the fault"
            return served
        except (ServerUnavailableError, TritonRequestError) as exc:
            assert time.monotonic() - started < target, f"not served within {target} s: {exc}"
        finally:
            remote.close()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def supervised(repository):
    """One supervised `mattrt serve` for the fault tests (each ends with the server serving again):
    canaries every 2 s, short back-off, room for every restart of this module; a generated key."""
    serve = Serve(repository, "--canary-seconds", "2", "--restart-delay", "0.2", "--max-restarts", "20",
                  "--drain-seconds", "5")
    yield serve
    serve.stop()
    assert serve.process.returncode == 0, "".join(serve.stderr)


def test_nothing_of_a_supervised_server_is_readable_by_another_user(supervised):
    """The key file and every shared-memory region are 0600 (checked as user nobody where setpriv
    and root allow), the key is never printed; Triton 2.51 still shows it on its command line
    (README: why, and the mitigations)."""
    info, state = supervised.info, supervised.status()
    key_file = Path(info["key_from"])
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert not any(key in json.dumps(line) for line in supervised.lines) and key not in "".join(supervised.stderr)
    regions = sorted(Path("/dev/shm").glob(f"{state['shm_prefix']}*"))
    assert len(regions) == 4  # one per stub: 2 pipeline instances, 2 stages
    assert {stat.S_IMODE(region.stat().st_mode) for region in regions} == {0o600}
    mapped = python_backend_regions(state["server_pid"])
    assert mapped and all(region.name.startswith(state["shm_prefix"]) for region in mapped)  # no default prefix
    assert key in Path(f"/proc/{state['server_pid']}/cmdline").read_bytes().decode()  # 2.51: argv only
    if os.getuid() == 0 and shutil.which("setpriv"):
        for path in (regions[0], key_file):
            denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                                    capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied)


@pytest.mark.parametrize("instance", [f"{MODEL}_0_0", f"{MODEL}_detail_0_0"])
def test_a_killed_stub_is_found_and_the_server_restarted(supervised, instance):
    """kill -9 of a pipeline or stage stub: Triton 2.51 keeps saying ready; mattrt's /ready says
    not ready until a new server serves, and the next good request is served within 30 s."""
    after = len(supervised.lines)
    before = supervised.status()
    stub = stub_processes(before["server_pid"])[instance]
    started = time.monotonic()
    os.kill(stub.pid, signal.SIGKILL)
    supervised.until_ready_is(503)
    degraded = supervised.wait("degraded", after)
    assert degraded["cause"] == "stub" and instance in degraded["reason"], degraded
    supervised.wait("ready", after)
    served = served_within(supervised, started)
    state = supervised.status()
    assert state["ready"] and state["server_pid"] != before["server_pid"]
    assert state["stub_deaths_total"] == before["stub_deaths_total"] + 1
    assert state["restarts"]["stub"] == before["restarts"]["stub"] + 1
    assert not list(Path("/dev/shm").glob(f"{before['shm_prefix']}*"))
    print(f"kill -9 of stub {instance}: served again {served:.1f} s after the kill")


def test_a_hung_stub_is_found_by_the_canary(supervised):
    """SIGSTOP of a stage stub (alive to a process watch, "not healthy" to Triton): the canary
    finds it and the server is restarted."""
    after = len(supervised.lines)
    before = supervised.status()
    stub = stub_processes(before["server_pid"])[f"{MODEL}_semantic_0_0"]
    started = time.monotonic()
    os.kill(stub.pid, signal.SIGSTOP)
    degraded = supervised.wait("degraded", after)
    assert degraded["cause"] == "canary" and "is not healthy" in degraded["reason"], degraded
    supervised.wait("ready", after)
    print(f"SIGSTOP of a stage stub: served again {served_within(supervised, started):.1f} s later")
    assert supervised.status()["canary_failures_total"] > before["canary_failures_total"]


def test_sigkill_of_the_server_group_leaves_no_region_and_the_server_comes_back(supervised):
    after = len(supervised.lines)
    before = supervised.status()
    assert list(Path("/dev/shm").glob(f"{before['shm_prefix']}*"))
    started = time.monotonic()
    os.killpg(before["server_pid"], signal.SIGKILL)  # tritonserver and its stubs: nobody removes the regions
    crashed = supervised.wait("crashed", after)
    assert crashed["exit_code"] == -signal.SIGKILL and crashed["signal"] == "SIGKILL", crashed
    assert not list(Path("/dev/shm").glob(f"{before['shm_prefix']}*"))  # removed before the crash line
    assert Path(crashed["log"]).is_file()  # the crashed server's log is kept
    supervised.wait("ready", after)
    print(f"SIGKILL of the server's process group: served again {served_within(supervised, started):.1f} s later")
    metrics = supervised.get("/metrics")[1]
    assert re.search(r'^mattrt_serve_restarts_total\{reason="crash"\} [1-9]', metrics, re.MULTILINE), metrics
    assert "mattrt_serve_ready 1" in metrics


def nested_json_body(depth: int = 1_000_000) -> bytes:
    """The body that makes Triton 2.51's recursive JSON parser overflow its stack (issue 21)."""
    return b'{"inputs":' + b"[" * depth


def post(endpoint: str, path: str, body: bytes, headers: dict | None = None) -> int | str:
    host, port = endpoint.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        connection.close()


def test_the_nested_json_request_crashes_triton_and_the_supervisor_restarts_it(supervised):
    after = len(supervised.lines)
    started = time.monotonic()
    answer = post(supervised.info["http"], f"/v2/models/{MODEL}/infer", nested_json_body())
    assert answer != 200, answer
    crashed = supervised.wait("crashed", after)
    assert crashed["signal"] == "SIGSEGV", crashed  # Triton's bug (README: residual risk)
    supervised.wait("ready", after)
    print(f"nested-JSON crash: served again {served_within(supervised, started):.1f} s later")


def test_an_oversized_request_is_refused_and_memory_returns_to_its_level(supervised):
    """A raw image far over the pixel limit is refused (400), but Triton 2.51 reads it and the
    Python backend copies it into the pipeline stub's region first, which never shrinks: the
    supervisor restarts the idle server, and memory comes back within 10 % of before."""
    rgb = image(40, 48)
    with TritonMattingClient(supervised.info["http"], model=MODEL, retries=0) as remote:
        for _ in range(3):
            remote.matte(rgb)
        rss_before, shm_before, pid = supervised.memory()
        after = len(supervised.lines)
        big = np.zeros((8000, 8000, 3), np.uint8)  # 192 MB, 400x the limit
        with pytest.raises(InputError, match="exceeds this model's limit"):
            remote.matte(big)
        del big
        rss_refused, _, still = supervised.memory()  # the same server unless it was already restarted
        degraded = supervised.wait("degraded", after)
        assert degraded["cause"] == "memory" and "over the budget" in degraded["reason"], degraded
        supervised.wait("ready", after)
    with TritonMattingClient(supervised.info["http"], model=MODEL, retries=3) as remote:
        for _ in range(3):
            remote.matte(rgb)
    rss_after, shm_after, _ = supervised.memory()
    shm_held = degraded["shm_bytes"]  # when the supervisor found it
    refused = f"{rss_refused / 2**20:.0f} MiB" if still == pid else "(not measured: already restarted)"
    print(f"oversized request: RSS {rss_before / 2**20:.0f} MiB before, {refused} after the refusal, "
          f"{rss_after / 2**20:.0f} MiB after the restart; shared memory {shm_before / 2**20:.0f} -> "
          f"{shm_held / 2**20:.0f} -> {shm_after / 2**20:.0f} MiB")
    assert shm_held > shm_before + 128 * 2**20  # what the restart is for
    assert rss_after + shm_after <= 1.10 * (rss_before + shm_before)
    assert shm_after <= 1.10 * shm_before


def test_a_strict_server_refuses_unauthenticated_requests_and_gives_up_after_its_restarts(repository, tmp_path):
    """--require-key-for-inference: the nested-JSON body without the key gets 403 and the server
    lives; clients with the key (the canary too) are served. --max-restarts 1: the first crash is
    restarted, the second ends serve with exit 1, the reason and the log tail."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    serve = Serve(repository, "--require-key-for-inference", "--max-restarts", "1", "--restart-delay", "0.2",
                  "--canary-seconds", "2", key_file=key_file)
    try:
        first = serve.status()
        assert first["canaries_total"] >= 2  # the canary passed, with the key
        assert post(serve.info["http"], f"/v2/models/{MODEL}/infer", nested_json_body()) == 403
        assert post(serve.info["http"], f"/v2/models/{MODEL}/generate", nested_json_body()) == 403
        with TritonMattingClient(serve.info["grpc"], protocol="grpc", model=MODEL, retries=0) as anonymous:
            with pytest.raises(InputError, match="pass the server's API key"):
                anonymous.matte(image(32, 32))
        with TritonMattingClient(serve.info["http"], api_key=KEY) as keyed:  # discovery works with the key
            assert keyed.matte(image(32, 32)).shape == (32, 32, 1)
        state = serve.status()
        assert state["server_pid"] == first["server_pid"] and state["crashes_total"] == 0
        assert "passed to tritonserver on its command line" in "".join(serve.stderr)  # a supplied key: the warning

        after = len(serve.lines)
        os.kill(state["server_pid"], signal.SIGKILL)  # tritonserver alone: its stubs clean up and exit
        assert serve.wait("crashed", after)["exit_code"] == -signal.SIGKILL
        serve.wait("ready", after)
        second = serve.status()
        os.kill(second["server_pid"], signal.SIGKILL)
        failed = serve.wait("failed", after)
        assert "failed 2 times within 600 s" in failed["reason"], failed
        assert serve.process.wait(timeout=120) == 1
        err = "".join(serve.stderr)
        assert "mattrt serve: error: tritonserver failed 2 times" in err and "log tail" in err, err
        for prefix in (first["shm_prefix"], second["shm_prefix"]):
            assert not list(Path("/dev/shm").glob(f"{prefix}*"))
    finally:
        serve.stop()


def test_leftover_regions_of_a_dead_starter_are_swept_and_no_other():
    """What a server killed with the `mattrt serve` that started it leaves is removed at the next
    start; regions of live starters, or still mapped by a process, stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = Path(f"/dev/shm/{SHM_PREFIX_BASE}{dead.pid}_test_leftover")
    live = Path(f"/dev/shm/{SHM_PREFIX_BASE}{os.getpid()}_test_live")
    mapped = Path(f"/dev/shm/{SHM_PREFIX_BASE}{dead.pid}_test_mapped")
    try:
        for path in (leftover, live, mapped):
            path.write_bytes(b"\0" * 4096)
        with open(mapped, "r+b") as handle, mmap.mmap(handle.fileno(), 4096):
            removed = sweep_dead_starters()
            assert leftover in removed and not leftover.exists()
            assert live.exists() and mapped.exists()
    finally:
        for path in (leftover, live, mapped):
            path.unlink(missing_ok=True)
