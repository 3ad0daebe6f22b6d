"""One contract for every backend in the registry (as Polygraphy checks every runner alike).

Each registered backend, on each of its devices, opens the stage engines of one tiny model and
must: name the inputs and outputs the pipeline reads, declare shapes and dtypes it then returns,
accept batches 1..max_batch, refuse wrong feeds (missing, extra, wrong dtype, wrong shape, batch
0, batch over the maximum) with InputError, refuse running before activation, and survive
repeated activate/deactivate with the same results. A backend or device this machine lacks is
skipped with the probe's reason, the check the runtime itself makes. A backend that serves whole
images from a server (artifacts "url") is held to the same pipeline results in tests/test_serving*.
"""

from __future__ import annotations

import numpy as np
import pytest

from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.sources import ModelSource
from mattrt.deploy.steps import ArtifactsFromGraphs, GraphsFromSource
from mattrt.engines import backends
from mattrt.errors import InputError
from mattrt.runtime.artifacts import check_engines
from mattrt.runtime.engine import EngineError

MODEL = "shm_tiny"

CASES = [
    pytest.param((name, device), id=f"{name}-{device}")
    for name, backend in backends.BACKENDS.items()
    if backend.artifacts != "url"
    for device in backend.devices
]


def _source(backend, device: str):
    if backend.artifacts == "model":
        return MODEL
    cache = ArtifactCache(log=None)
    graphs = GraphsFromSource(ModelSource(MODEL), cache=cache, log=None)
    return ArtifactsFromGraphs(graphs, backend, device=device, precision="fp32", cache=cache)().directory


@pytest.fixture(params=CASES)
def opened(request):
    name, device = request.param
    backend = backends.get_backend(name)
    missing = backend.missing(device)
    if missing:
        pytest.skip("needs " + "; ".join(f"{p.name}: {p.detail}" for p in missing))
    spec, engines = backend.open(_source(backend, device), device=device, precision="fp32")
    yield backend, spec, engines
    for engine in engines.values():
        engine.deactivate()


def _feeds(engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        meta.name: rng.random((batch, *meta.shape[1:]), dtype=np.float32).astype(meta.dtype)
        for meta in engine.inputs
    }


def test_stage_engines_meet_the_pipeline_contract(opened):
    backend, spec, engines = opened
    check_engines(spec, engines)
    for engine in engines.values():
        assert engine.backend == backend.name and engine.device_arrays == backend.device_arrays
        for meta in (*engine.inputs, *engine.outputs):
            assert meta.shape[0] is None and all(isinstance(d, int) and d > 0 for d in meta.shape[1:])
        top = engine.max_batch or 3
        with engine:
            for batch in sorted({1, min(2, top), top}):
                outputs = engine.run(_feeds(engine, batch))
                assert list(outputs) == engine.output_names
                for meta in engine.outputs:
                    value = outputs[meta.name]
                    assert value.dtype == meta.dtype
                    if engine.fixed_spatial:
                        assert value.shape == (batch, *meta.shape[1:])
                    else:
                        assert value.shape[:2] == (batch, meta.shape[1])
                    assert np.isfinite(value).all()


def test_wrong_feeds_are_refused_clearly(opened):
    _, _, engines = opened
    engine = engines["detail"]
    with engine:
        good = _feeds(engine, 1)
        first = engine.input_names[0]
        with pytest.raises(InputError, match=f"missing {first}"):
            engine.run({k: v for k, v in good.items() if k != first})
        with pytest.raises(InputError, match="unexpected extra"):
            engine.run({**good, "extra": good[first]})
        with pytest.raises(InputError, match="must be float32, got float64"):
            engine.run({**good, first: good[first].astype(np.float64)})
        with pytest.raises(InputError, match="must have shape"):
            engine.run({**good, first: good[first][:, :1]})
        with pytest.raises(InputError, match="at least one item"):
            engine.run({k: v[:0] for k, v in good.items()})
        if engine.max_batch is not None:
            with pytest.raises(InputError, match=f"exceeds its maximum {engine.max_batch}"):
                engine.run(_feeds(engine, engine.max_batch + 1))


def test_activation_is_required_and_repeatable(opened):
    _, _, engines = opened
    engine = engines["semantic"]
    feeds = _feeds(engine, 1, seed=3)
    with pytest.raises(EngineError, match="not active"):
        engine.run(feeds)
    engine.activate()
    engine.activate()  # a second activate is a no-op
    first = engine.run(feeds)
    engine.deactivate()
    engine.deactivate()
    with pytest.raises(EngineError, match="not active"):
        engine.run(feeds)
    with engine:
        again = engine.run(feeds)
    for name in first:
        np.testing.assert_allclose(again[name], first[name], rtol=1e-5, atol=1e-6)


def test_device_arrays_path_matches_the_host_path(opened):
    backend, _, engines = opened
    engine = engines["detail"]
    if not engine.device_arrays:
        with engine, pytest.raises(EngineError, match="takes host arrays only"):
            engine.run_device(_feeds(engine, 1))
        return
    if engine.device != "cpu":
        pytest.skip("device feeds need the device's array library; tests/test_kernels_gpu.py covers CUDA")
    feeds = _feeds(engine, 2, seed=5)
    with engine:
        host = engine.run(feeds)
        device = {k: np.from_dlpack(v) for k, v in engine.run_device(feeds).items()}
    for name in host:
        np.testing.assert_allclose(device[name], host[name], rtol=1e-6, atol=1e-7)
