"""`mattrt bench`: refusal before any work, the statistics, the interleaving order, and one tiny
end-to-end run that writes JSON, CSV and PNG with skips recorded with their reasons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.commands.bench import bench_options
from mattrt.engines.backends import get_backend
from mattrt.errors import InputError
from mattrt.jobs.bench import measure, plan, report, runners


# -- refusal before any work ----------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a run gets as far as making images or opening a backend."""

    def forbidden(*args, **kwargs):
        raise AssertionError("bench started work before refusing its arguments")

    monkeypatch.setattr(report, "run_cases", forbidden)
    monkeypatch.setattr(measure, "make_images", forbidden)


@pytest.mark.parametrize("argv, message", [
    (["--quick", "--sweep-backends", "nonesuch"], "unknown backend 'nonesuch'"),
    (["--quick", "--tiles", "256"], "tile 256 is larger than the 384x216 image"),
    (["--quick", "--tiles", "100"], "tile size 100 (--tile) is not a multiple of model 'aim_synthetic''s stride multiple 32"),
    (["--quick", "--resolutions", "4K", "wide"], "resolution 'wide' does not parse"),
    (["--quick", "--resolutions", "640x"], "resolution '640x' does not parse"),
    (["--quick", "--resolutions", "4x4"], "at least 8 pixels"),
    (["--quick", "--resolutions", "4k", "3840x2160"], "the same size twice"),
    (["--model", "nonesuch"], "unknown model 'nonesuch'"),
    (["--quick", "--name", "../x"], "--name '../x'"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, tmp_path, capsys, no_work):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--backend", "nonesuch"], "invalid choice: 'nonesuch'"),
    (["--quick", "--batches", "0"], "tile batch must be at least 1"),
    (["--quick", "--threads", "0"], "expected a positive number"),
    (["--quick", "--repeats", "0"], "repeats must be at least 1"),
])
def test_bad_option_values_are_refused_by_the_parser(argv, message, tmp_path, capsys, no_work):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_results_are_not_overwritten(tmp_path, capsys, no_work):
    (tmp_path / "mine.csv").write_text("keep me")
    assert main(["bench", "--quick", "--out", str(tmp_path), "--name", "mine"]) == 1
    assert "mine.csv exists" in capsys.readouterr().err
    assert (tmp_path / "mine.csv").read_text() == "keep me"


def test_resolution_tokens():
    assert plan.parse_resolution("4K") == (3840, 2160)
    assert plan.parse_resolution("8k") == (7680, 4320)
    assert plan.parse_resolution("1080p") == (1920, 1080)
    assert plan.parse_resolution(" 640 x 360 ") == (640, 360)
    assert plan.resolution_label((3840, 2160)) == "4k"
    with pytest.raises(InputError):
        plan.parse_resolution("4K60")


# -- statistics and order ----------------------------------------------------------------------
def test_summary_statistics_on_known_samples():
    stats = measure.summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert stats["n"] == 10
    assert stats["p50"] == pytest.approx(5.5)
    assert stats["p90"] == pytest.approx(9.1)  # 9 + 0.1 * (10 - 9), linear interpolation
    assert stats["p99"] == pytest.approx(9.91)
    assert stats["mean"] == pytest.approx(5.5)
    assert stats["std"] == pytest.approx(3.0276503540974917)  # sample std, ddof 1
    assert (stats["min"], stats["max"]) == (1.0, 10.0)
    one = measure.summarize([0.25])
    assert one["p50"] == one["p99"] == one["mean"] == 0.25 and one["std"] == 0.0
    with pytest.raises(InputError):
        measure.summarize([])


def test_interleaving_runs_every_case_once_per_round_with_rotating_start():
    order = measure.interleaved_schedule(3, warmup=1, repeats=2)
    assert order == [
        (0, 0, False), (0, 1, False), (0, 2, False),
        (1, 1, True), (1, 2, True), (1, 0, True),
        (2, 2, True), (2, 0, True), (2, 1, True),
    ]
    assert measure.interleaved_schedule(0, 1, 3) == []


def test_authors_size_keeps_aspect_on_stride_multiples():
    assert runners.authors_size(2160, 3840, 512, 32) == (288, 512)
    assert runners.authors_size(2160, 3840, 320, 32) == (160, 320)  # 180 cut down to 160
    assert runners.authors_size(1080, 1920, 256, 32) == (128, 256)
    assert runners.authors_size(100, 4000, 256, 32) == (32, 256)


def test_host_memory_separates_steps():
    memory = measure.HostMemory()
    if not memory.available:
        pytest.skip(memory.reason)
    before = memory.start()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB touched
    grown = memory.added_mib(before)
    del block
    before = memory.start()
    small = memory.added_mib(before)
    assert grown >= 60
    assert small < 8


# -- one tiny run end to end ------------------------------------------------------------------------
def test_tiny_bench_writes_json_csv_and_plots_with_skips(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["bench", "--model", "aim_tiny", "--backend", "torch", "tensorrt", "--resolutions", "96x64",
                 "128x96", "--tiles", "64", "32", "--repeats", "2", "--warmup", "1", "--threads", "1",
                 "--out", str(out), "--name", "tiny", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "tiny.json").read_text())
    for key in ("date", "command", "git", "hardware", "versions", "settings", "cases", "skipped", "baselines",
                "runs_in_order", "memory_method"):
        assert key in report
    assert report["settings"]["repeats"] == 2 and report["settings"]["warmup"] == 1
    rows = {(r["label"], r["resolution"]): r for r in report["cases"]}
    ok = [r for r in report["cases"] if r["status"] == "ok"]
    kinds = {r["kind"] for r in ok}
    assert kinds == {"tiled", "authors", "whole_onnx"}
    for row in ok:
        assert row["runs"] == 2
        assert row["p50_s"] > 0 and row["p90_s"] >= row["p50_s"] - 1e-12 and row["p99_s"] >= row["p90_s"] - 1e-12
        assert row["images_per_s"] == pytest.approx(1 / row["mean_s"])
        assert row["megapixels_per_s"] == pytest.approx(row["width"] * row["height"] / 1e6 / row["mean_s"])
        assert row["io_read_p50_s"] > 0 and row["io_write_p50_s"] > 0
        assert 0 <= row["sad"] < row["width"] * row["height"] / 1000
    tiled = [r for r in ok if r["kind"] == "tiled"]
    assert all(r["semantic_p50_s"] > 0 and r["detail_p50_s"] > 0 for r in tiled)
    assert {r["tile"] for r in tiled} == {64, 32}
    assert [r["resolution"] for r in tiled if r["sweep"]] == ["128x96"]  # the sweep runs at the largest size
    assert all(r["network_p50_s"] > 0 for r in ok if r["kind"] != "tiled")
    # Absent backends and devices are skipped with the probe's reason, never replaced.
    skipped = {(s["variant"], s["resolution"]): s["reason"] for s in report["skipped"]}
    trt = [reason for (label, _), reason in skipped.items() if label.startswith("tensorrt cuda")]
    if trt:
        assert all("needs " in reason for reason in trt)
    torch_cuda = [reason for (label, _), reason in skipped.items() if label.startswith("torch cuda")]
    if torch_cuda:
        assert all("torch_cuda" in reason for reason in torch_cuda)
    assert not any(r["backend"] == "onnxruntime" and r["kind"] == "tiled" for r in report["cases"])
    # Every measured run is in the schedule once per round, in interleaved order.
    live = [r for r in report["cases"] if r["status"] == "ok"]
    assert len(report["runs_in_order"]) == 3 * len(live)
    # The CSV has one row per case with the same statistics; the plots are PNG files.
    with (out / "tiny.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(report["cases"])
    assert {"p50_s", "p90_s", "p99_s", "mean_s", "std_s", "megapixels_per_s", "sad", "memory_matting_mib",
            "reason"} <= set(table[0])
    for name in ("tiny-latency.png", "tiny-tiles.png", "tiny-accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["baselines"] and {b["resolution"] for b in report["baselines"]} == {"96x64", "128x96"}
    assert rows  # labels are unique per resolution


def test_quick_plan_lists_absent_backends_as_skipped_with_reasons(tmp_path):
    from mattrt.cli import build_parser
    from mattrt.engines import backends

    argv = ["bench", "--quick", "--out", str(tmp_path)]
    quick = plan.build_plan(bench_options(build_parser(argv).parse_args(argv)))
    assert quick.model == plan.QUICK_MODEL and quick.repeats == 3 and quick.warmup == 1
    assert quick.sizes == [(384, 216), (512, 288)]
    by_label = {}
    for case in quick.cases:
        by_label.setdefault(case.variant.label, set()).add(case.status)
        if case.status == "skipped":
            assert case.reason
    for case in quick.cases:
        v = case.variant
        if v.kind == "tiled" and v.backend in backends.BACKENDS:
            missing = backends.BACKENDS[v.backend].missing(v.device)
            assert (case.status == "skipped") == bool(missing)
            if missing:
                assert all(p.name in case.reason for p in missing)
    if "triton" not in backends.BACKENDS:
        assert any(c.variant.kind == "triton" and "serving not merged" in c.reason for c in quick.cases)
    # The quick tile sweep: torch at the model's tile and two thirds of it, at the largest size only.
    sweep = [c for c in quick.cases if c.variant.sweep]
    assert {c.variant.tile for c in sweep} == {128} and {c.size for c in sweep} == {(512, 288)}
    assert {c.variant.kind for c in quick.cases if c.status == "pending"} == {"tiled", "authors", "whole_onnx"}
    assert not any(tmp_path.iterdir())


def test_a_variant_that_fails_is_recorded_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    def broken_open(self):
        raise RuntimeError("session could not be created")

    monkeypatch.setattr(runners.WholeOnnxRunner, "open", broken_open)
    out = tmp_path / "results"
    code = main(["bench", "--model", "aim_tiny", "--backend", "torch", "--device", "cpu", "--resolutions", "96x64",
                 "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out), "--name", "broken",
                 "--no-progress"])
    assert code == 1
    report = json.loads((out / "broken.json").read_text())
    assert [f["reason"] for f in report["failed"]] == ["RuntimeError: session could not be created"]
    assert {r["kind"] for r in report["cases"] if r["status"] == "ok"} == {"tiled", "authors"}
    assert "failed" in capsys.readouterr().out


def test_an_imported_alpha_network_is_benched_against_rembgs_two_ways(tmp_path, capsys):
    """`bench --model NAME` of an imported network: mattrt's pipeline (refined, and FP32 without
    refinement) beside rembg's way and rembg's alpha-matting way on the original graph, time and
    SAD in the same run; options an alpha network has no use for are refused."""
    from onnx_nets import alpha_net, write_model

    from mattrt.deploy.imported import import_card

    cache = tmp_path / "cache"
    imported, _ = import_card(write_model(tmp_path / "src", "tinyalpha", alpha_net()), cache_dir=cache, log=None)
    out = tmp_path / "results"
    argv = ["bench", "--model", "tinyalpha", "--cache-dir", str(cache), "--backend", "onnxruntime", "--precision",
            "fp32", "--device", "cpu", "--resolutions", "96x64", "--repeats", "1", "--warmup", "1", "--threads", "1",
            "--out", str(out), "--name", "alpha", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "alpha.json").read_text())
    ok = {r["label"]: r for r in report["cases"] if r["status"] == "ok"}
    assert sorted(ok) == ["onnxruntime cpu fp32 (no refinement, 1 thr)", "onnxruntime cpu fp32 (refined, 1 thr)",
                          "rembg alpha matting (1 thr)", "rembg's way (1 thr)"]
    for row in ok.values():
        assert row["p50_s"] > 0 and 0 <= row["sad"] < 96 * 64
    assert ok["onnxruntime cpu fp32 (refined, 1 thr)"]["refine_p50_s"] > 0
    assert ok["rembg alpha matting (1 thr)"]["refine_p50_s"] > 0 and ok["rembg's way (1 thr)"]["network_p50_s"] > 0
    opened = report["opened"]["rembg's way (1 thr)"]
    assert opened["graph"] == str(imported.graph) and "bilinear" in opened["way"]
    # The untrained tiny network leaves no background in rembg's trimap: pymatting refuses it and
    # rembg keeps the plain alpha, so its baseline does and says so.
    matting = report["opened"]["rembg alpha matting (1 thr)"]
    assert "pymatting" in matting["way"] and "background" in " ".join(matting.get("fell_back_to_the_plain_alpha", []))
    assert {(b["tiled"], b["baseline"]) for b in report["baselines"]} == {
        ("onnxruntime cpu fp32 (refined, 1 thr)", "rembg's way (1 thr)"),
        ("onnxruntime cpu fp32 (refined, 1 thr)", "rembg alpha matting (1 thr)")}
    assert "the speed" in capsys.readouterr().out

    for extra, option in ((["--tiles", "64"], "--tiles"), (["--batches", "2"], "--batches")):
        assert main([*argv, "--name", "refused", *extra]) == 1
        assert f"{option}: tinyalpha is a network whose output is alpha" in capsys.readouterr().err
    assert not (out / "refused.json").exists()


@pytest.mark.skipif(not available("openvino"), reason=skip_reason("openvino"))
def test_rows_compare_backends_and_precisions_with_fp32(tmp_path, capsys):
    """onnxruntime vs openvino at fp32 and bf16 (where this CPU has it): each row's speed beside its
    ΔSAD and |Δalpha| against onnxruntime fp32 at the same resolution."""
    out = tmp_path / "results"
    code = main(["bench", "--model", "aim_tiny", "--backend", "onnxruntime", "openvino", "--precision", "fp32",
                 "bf16", "--resolutions", "96x64", "--repeats", "1", "--warmup", "1", "--threads", "1",
                 "--no-baselines", "--out", str(out), "--name", "vs", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "vs.json").read_text())
    rows = {r["label"].split(" (")[0]: r for r in report["cases"]}
    assert rows["onnxruntime cpu bf16"]["status"] == "skipped" and "not 'bf16'" not in rows["onnxruntime cpu bf16"]["reason"]
    reference = rows["onnxruntime cpu fp32"]
    assert reference["fp32_reference"] == reference["label"] and reference["speedup_vs_fp32"] == pytest.approx(1.0)
    assert reference["delta_sad_pct"] == 0 and reference["max_abs_delta_alpha"] == 0
    ours = rows["openvino cpu fp32"]
    assert ours["status"] == "ok" and ours["fp32_reference"] == reference["label"]
    assert ours["max_abs_delta_alpha"] < 1e-3 and abs(ours["delta_sad_pct"]) < 0.1 and ours["speedup_vs_fp32"] > 0
    bf16 = rows["openvino cpu bf16"]
    if get_backend("openvino").refusal("cpu", "bf16"):
        assert bf16["status"] == "skipped" and "bfloat16" in bf16["reason"]
    else:
        assert bf16["status"] == "ok" and bf16["tail_abs_delta_alpha"] <= bf16["max_abs_delta_alpha"]
    assert "x fp32" in captured.out and "ΔSAD %" in captured.out
    assert report["versions"]["openvino"] and "isa_flags" in report["hardware"]
