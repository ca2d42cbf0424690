"""The kernels' autotuner (kernels/tuner.py) on a CPU: a fake kernel and a fake benchmark stand in for the GPU."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

import gconv_triton
from gconv_triton import autotune as pretune_cli
from gconv_triton.kernels import tuner as at
from gconv_triton.kernels import group_conv as gconv, group_conv_depthwise as depthwise, \
    group_conv_weight_grad as wgrad

from helpers import DEVICE, INTERPRETED, assert_close, torch_backend, triton_backend


def _kernel(x_ptr, y_ptr, M_TOTAL, N, K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K):
    """Signature of the fake kernel (the autotuner reads parameter names from ``kernel.fn``)."""


class FakeKernel:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    fn = staticmethod(_kernel)

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = dict(zip(["x_ptr", "y_ptr", "M_TOTAL", "N", "K", "PRECISION"], args), **kwargs)
            self.launches.append(dict(meta, grid=grid(meta)))
        return launch


def cfg(bm, bn, bk, warps=4, stages=3):
    return at.TuneConfig.make(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), warps, stages)


SPACE = [cfg(128, 128, 32, 8, 3), cfg(64, 64, 32), cfg(64, 32, 64, 4, 4), cfg(32, 32, 32, 2, 2), cfg(16, 16, 16)]
TILES = dict(BLOCK_M="M_TOTAL", BLOCK_N="N", BLOCK_K="K")
OPERANDS = [("BLOCK_M", "BLOCK_K"), ("BLOCK_K", "BLOCK_N")]


def config_of(launch) -> at.TuneConfig:
    return cfg(launch["BLOCK_M"], launch["BLOCK_N"], launch["BLOCK_K"], launch["num_warps"], launch["num_stages"])


class FakeBench:
    """Runs the candidate once (as do_bench would) and reports the cost the test assigned to its config."""

    def __init__(self, kernel, cost):
        self.kernel, self.cost, self.timed = kernel, cost, []

    def __call__(self, run):
        run()
        config = config_of(self.kernel.launches[-1])
        self.timed.append(config)
        return self.cost(config)


def make_tuner(tmp_path, cost=None, smem=None, kernel=None, cache=None, configs=SPACE):
    kernel = kernel if kernel is not None else FakeKernel()
    bench = FakeBench(kernel, cost or (lambda c: 1.0))
    tuner = at.Autotuner(kernel, configs, key=["M_TOTAL", "N", "K", "PRECISION"], tiles=TILES, operands=OPERANDS,
                         bench=bench, cache=cache if cache is not None else at.ConfigCache(tmp_path / "cache.json"),
                         shared_memory=lambda device: smem)
    return tuner, kernel, bench


def launch(tuner, m=1000, n=64, k=64, dtype=torch.float32, precision="ieee", x=None):
    x = torch.empty(4, dtype=dtype) if x is None else x
    tuner[lambda meta: (-(-meta["M_TOTAL"] // meta["BLOCK_M"]), -(-meta["N"] // meta["BLOCK_N"]))](
        x, x, m, n, k, precision)


# ------------------------------------------------------------------------------------------------ configs/keys
def test_config_json_round_trip_and_rejects_malformed():
    c = cfg(64, 32, 16, 8, 4)
    assert at.TuneConfig.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert c.launch_kwargs() == dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=4)
    for bad in (None, [], {"blocks": {"BLOCK_M": 64}}, {"blocks": {"BLOCK_M": "64"}, "num_warps": 4, "num_stages": 3},
                {"blocks": {"BLOCK_M": 64}, "num_warps": True, "num_stages": 3}):
        with pytest.raises(ValueError):
            at.TuneConfig.from_json(bad)


def test_key_buckets_sizes_to_powers_of_two(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    x32 = torch.empty(4)

    def key(m, n=64, k=64, x=x32, precision="ieee"):
        return tuner.problem_key(dict(x_ptr=x, y_ptr=x, M_TOTAL=m, N=n, K=k, PRECISION=precision))[0]

    assert [at.next_power_of_2(v) for v in (0, 1, 2, 3, 1000, 1024, 1025)] == [1, 1, 2, 4, 1024, 1024, 2048]
    assert key(1000) == key(1024) == key(513)
    assert key(1025) != key(1024) and key(512) != key(1024)
    assert key(1000, n=40) == key(1000, n=64) != key(1000, n=65)
    assert key(1000, precision="tf32") != key(1000)                       # constexpr flags stay exact
    assert key(1000, x=torch.empty(4, dtype=torch.bfloat16)) != key(1000)  # dtype
    assert key(1000, x=torch.empty(4, 4).t()) != key(1000)                 # memory layout
    k = key(1000)
    assert k.startswith(f"{tuner.name}|cpu|float32|contiguous|") and "M_TOTAL=1024" in k


# ------------------------------------------------------------------------------------------------------ pruning
def test_prune_by_problem_size():
    # No block larger than max(16, next_power_of_2(dim)).
    kept = at.prune(SPACE, dict(BLOCK_M=40, BLOCK_N=20, BLOCK_K=1000))
    assert kept == [cfg(64, 32, 64, 4, 4), cfg(32, 32, 32, 2, 2), cfg(16, 16, 16)]
    assert at.prune(SPACE, dict(BLOCK_M=3, BLOCK_N=3, BLOCK_K=3)) == [cfg(16, 16, 16)]
    # When no config is that small, the bounds double until the smallest tiles fit.
    space = [cfg(128, 64, 32), cfg(64, 32, 32), cfg(64, 64, 64)]
    assert at.prune(space, dict(BLOCK_M=10, BLOCK_N=10, BLOCK_K=10)) == space[1:]   # bounds 64
    with pytest.raises(ValueError, match="at least one config"):
        at.prune([], {})


def test_prune_keeps_wgmma_rows_for_narrow_problems():
    # 10 output channels on M: the size rule alone leaves 16-row tiles; with a 64-row minimum (wgmma), the
    # 64-row, 4-warp configs stay.
    dims = dict(BLOCK_M=10, BLOCK_N=1000, BLOCK_K=1000)
    assert at.prune(SPACE, dims) == [cfg(16, 16, 16)]
    assert at.prune(SPACE, dims, {"BLOCK_M": 64}) == [cfg(64, 64, 32), cfg(64, 32, 64, 4, 4), cfg(32, 32, 32, 2, 2),
                                                     cfg(16, 16, 16)]
    assert at.mma_rows((9, 0)) == at.mma_rows((10, 0)) == 64
    assert at.mma_rows((8, 0)) == at.mma_rows(None) == at.MIN_BLOCK


def test_fitting_uses_the_compiled_numbers():
    # The compiled figures, not the estimate: an estimate of 48 KiB that compiles to 20 KiB fits a 40 KiB device;
    # a config that spills goes, one that fails to compile goes.
    res = {cfg(128, 128, 32, 8, 3): at.Resources(20 * 1024, 128, 0),
           cfg(64, 64, 32): at.Resources(60 * 1024, 96, 0),          # overflows
           cfg(64, 32, 64, 4, 4): at.Resources(30 * 1024, 255, 64),   # spills
           cfg(32, 32, 32, 2, 2): None,                               # compile error
           cfg(16, 16, 16): at.Resources(4 * 1024, 40, None)}         # spills unknown: kept

    def resources(c):
        if res[c] is None:
            raise RuntimeError("compile error")
        return res[c]

    # (cfg(128, 128, 32, 8, 3) in fp16 is estimated at 3 stages x (128x32 + 32x128) x 2 bytes = 48 KiB)
    assert at.fitting(SPACE, resources, 40 * 1024) == [cfg(128, 128, 32, 8, 3), cfg(16, 16, 16)]
    # Nothing clean: the fitting config with the fewest spill bytes, else the one needing least shared memory.
    spill = {c: at.Resources(1024, 255, 8 * (i + 1)) for i, c in enumerate(SPACE)}
    assert at.fitting(SPACE[::-1], spill.__getitem__, 40 * 1024) == [SPACE[0]]
    assert at.fitting(SPACE, lambda c: at.Resources(100 * 1024 + c.block("BLOCK_M"), 1, 0), 1024) == \
        [cfg(16, 16, 16)]
    assert at.fitting(SPACE, lambda c: 1 / 0, 1024) == SPACE[:1]        # nothing compiles: the launch will say why
    # The sized configs all spill: clean configs of the rest of the space (larger tiles) are kept instead.
    small, large = SPACE[3:], SPACE[:3]
    spills_small = {**{c: at.Resources(1024, 255, 64) for c in small}, **{c: at.Resources(1024, 128, 0) for c in large}}
    assert at.fitting(small, spills_small.__getitem__, 40 * 1024, fallback=[large[2:], large[:2]]) == large[2:]
    assert at.fitting(small, spill.__getitem__, 40 * 1024, fallback=[large]) == [small[0]]   # none clean anywhere


def test_wider_groups_grow_the_size_bounds(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    x = torch.empty(4)
    bound = dict(x_ptr=x, M_TOTAL=3, N=3, K=3, PRECISION="ieee")
    assert tuner.sized(bound, x.device) == [cfg(16, 16, 16)]
    assert list(tuner.wider(bound, x.device)) == [[cfg(32, 32, 32, 2, 2)], [cfg(64, 64, 32), cfg(64, 32, 64, 4, 4)],
                                                   [cfg(128, 128, 32, 8, 3)]]
    # With a limit, the tuner compiles the next group only when every smaller config spills.
    compiled = []

    def resources(config, launch):
        compiled.append(config)
        return at.Resources(1024, 64, 0 if config.block("BLOCK_M") >= 64 else 128)

    tuner = tuner.replace(shared_memory=lambda device: 48 * 1024, resources=resources)
    assert tuner.candidates(bound, x.device, (None, (), {})) == [cfg(64, 64, 32), cfg(64, 32, 64, 4, 4)]
    assert cfg(128, 128, 32, 8, 3) not in compiled


def test_candidates_compile_on_a_device_with_a_limit(tmp_path):
    # With a shared-memory limit, each sized candidate is compiled (here: a fake resources hook) and filtered.
    seen = []

    def resources(config, launch):
        seen.append(config)
        return at.Resources(1024 if config.num_warps == 4 else 10 ** 6, 64, 0)

    tuner, _, _ = make_tuner(tmp_path)
    tuner = tuner.replace(shared_memory=lambda device: 48 * 1024, resources=resources)
    x = torch.empty(4)
    bound = dict(x_ptr=x, M_TOTAL=1 << 20, N=1 << 20, K=1 << 20, PRECISION="ieee")
    assert tuner.candidates(bound, x.device) == SPACE                   # nothing to compile for: sizes only
    assert tuner.candidates(bound, x.device, (None, (), {})) == [c for c in SPACE if c.num_warps == 4]
    assert seen == SPACE


def test_candidates_are_a_function_of_the_key(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    x = torch.empty(4)
    a = tuner.candidates(dict(x_ptr=x, M_TOTAL=33, N=17, K=64, PRECISION="ieee"), x.device)
    b = tuner.candidates(dict(x_ptr=x, M_TOTAL=64, N=32, K=64, PRECISION="ieee"), x.device)
    assert a == b == [cfg(64, 32, 64, 4, 4), cfg(32, 32, 32, 2, 2), cfg(16, 16, 16)]   # M <= 64, N <= 32


# ------------------------------------------------------------------------------------------------------ tuning
def test_picks_the_fastest_config_and_persists_it(tmp_path):
    cost = {cfg(128, 128, 32, 8, 3): 3.0, cfg(64, 64, 32): 2.0, cfg(64, 32, 64, 4, 4): 0.5,
            cfg(32, 32, 32, 2, 2): 0.7, cfg(16, 16, 16): 9.0}
    tuner, kernel, bench = make_tuner(tmp_path, cost=cost.get)
    launch(tuner, m=1000, n=100)
    assert bench.timed == SPACE                      # every candidate timed once, in order
    assert config_of(kernel.launches[-1]) == cfg(64, 32, 64, 4, 4) == tuner.last_config
    assert kernel.launches[-1]["grid"] == (-(-1000 // 64), -(-100 // 32))   # the grid saw the tuned blocks
    launch(tuner, m=700, n=90)                      # same bucket: no timing
    assert len(bench.timed) == len(SPACE)
    assert config_of(kernel.launches[-1]) == cfg(64, 32, 64, 4, 4)

    data = json.loads((tmp_path / "cache.json").read_text())
    assert data["format"] == at.CACHE_FORMAT and data["version"] == at.CACHE_VERSION
    (entry,) = data["entries"].values()
    assert entry["config"] == cfg(64, 32, 64, 4, 4).to_json() and entry["ms"] == 0.5

    # Another process: a new tuner on the same file launches the cached config without timing anything.
    fresh, kernel2, bench2 = make_tuner(tmp_path, cost=cost.get)
    launch(fresh, m=1000, n=100)
    assert bench2.timed == [] and config_of(kernel2.launches[-1]) == cfg(64, 32, 64, 4, 4)


def test_cache_merges_entries_of_processes_tuning_side_by_side(tmp_path):
    a, _, _ = make_tuner(tmp_path)
    b, _, _ = make_tuner(tmp_path)
    launch(a, m=1000)
    launch(b, m=5000)        # b read the file before a wrote: its write must keep a's entry
    assert len(json.loads((tmp_path / "cache.json").read_text())["entries"]) == 2
    assert not list(tmp_path.glob("*.tmp"))          # temporary files renamed over the cache, none left


def test_intercept_launches_records_instead_of_tuning(tmp_path):
    """Within ``intercept_launches`` a launch goes to the tool's record with the grid and arguments as passed:
    nothing is timed, launched or cached; outside it the tuner runs as before."""
    tuner, kernel, bench = make_tuner(tmp_path)
    seen = []
    with at.intercept_launches(lambda *launch: seen.append(launch) or "recorded"):
        x = torch.empty(4)
        grid = (1, 1)
        assert tuner[grid](x, x, 1000, 64, 64, "ieee") == "recorded"
    assert seen == [(tuner, grid, (x, x, 1000, 64, 64, "ieee"), {})]
    assert not kernel.launches and not bench.timed and tuner.last_config is None
    assert not (tmp_path / "cache.json").exists()
    launch(tuner)
    assert kernel.launches and tuner.last_config is not None


def test_stale_cached_config_is_retuned(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    launch(tuner)
    data = json.loads((tmp_path / "cache.json").read_text())
    for entry in data["entries"].values():
        entry["config"] = cfg(256, 256, 256).to_json()      # not in the space any more
    (tmp_path / "cache.json").write_text(json.dumps(data))
    fresh, kernel, bench = make_tuner(tmp_path, cost=lambda c: c.block("BLOCK_M"))
    launch(fresh)
    assert bench.timed == SPACE[1:] and config_of(kernel.launches[-1]) == cfg(16, 16, 16)   # N = 64: no 128


def test_failing_configs_are_skipped_and_all_failing_raises(tmp_path):
    def cost(c):
        if c.block("BLOCK_M") >= 64:
            raise RuntimeError("out of resources")
        return c.block("BLOCK_M")

    tuner, kernel, _ = make_tuner(tmp_path, cost=cost)
    launch(tuner)
    assert config_of(kernel.launches[-1]) == cfg(16, 16, 16)

    def broken(c):
        raise RuntimeError(f"compile error for {c}")

    tuner, _, _ = make_tuner(tmp_path / "other", cost=broken)
    with pytest.raises(RuntimeError, match="compile error"):
        launch(tuner)


def test_tuning_off_runs_the_first_candidate(tmp_path, monkeypatch):
    monkeypatch.setenv(at.TUNE_ENV, "0")
    tuner, kernel, bench = make_tuner(tmp_path, cost=lambda c: -c.block("BLOCK_M"))
    launch(tuner, m=40, n=20)
    assert bench.timed == [] and config_of(kernel.launches[-1]) == cfg(64, 32, 64, 4, 4)
    assert not (tmp_path / "cache.json").exists()


def test_config_kwargs_cannot_be_passed_by_the_caller(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    x = torch.empty(4)
    with pytest.raises(TypeError, match="chosen by the autotuner"):
        tuner[lambda meta: (1,)](x, x, 1, 1, 1, "ieee", BLOCK_M=16)


def test_bad_spec_is_rejected_at_decoration():
    with pytest.raises(ValueError, match="'M_TOTL' is not a parameter"):
        at.Autotuner(FakeKernel(), SPACE, key=["M_TOTL"], tiles={})
    with pytest.raises(ValueError, match="not a key argument"):
        at.Autotuner(FakeKernel(), SPACE, key=["N"], tiles=dict(BLOCK_M="M_TOTAL"))
    with pytest.raises(ValueError, match="BLOCK_X"):
        at.Autotuner(FakeKernel(), SPACE, key=["N"], tiles=dict(BLOCK_X="N"))


# ------------------------------------------------------------------------------------------------ cache file
def test_cache_location_env_override(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "tuned.json"
    monkeypatch.setenv(at.CACHE_ENV, str(target))
    assert at.cache_path() == target
    tuner, _, _ = make_tuner(tmp_path, cache=at.ConfigCache())      # follows the environment variable
    launch(tuner)
    assert json.loads(target.read_text())["format"] == at.CACHE_FORMAT
    monkeypatch.delenv(at.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert at.cache_path() == tmp_path / "xdg" / "gconv_triton" / "autotune.json"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"foo": 1}), json.dumps([1, 2]),
                                     json.dumps({"format": at.CACHE_FORMAT, "version": 99, "entries": {}})],
                         ids=["corrupt", "foreign-object", "foreign-list", "other-version"])
def test_unreadable_cache_is_ignored_with_one_warning_and_left_alone(tmp_path, content):
    path = tmp_path / "cache.json"
    path.write_text(content)
    tuner, kernel, bench = make_tuner(tmp_path, cost=lambda c: c.block("BLOCK_M"))
    with pytest.warns(at.AutotuneCacheWarning, match="cache.json") as caught:
        launch(tuner, m=100)
        launch(tuner, m=5000)              # a second key: tuned in memory, no second warning
    assert len([w for w in caught if issubclass(w.category, at.AutotuneCacheWarning)]) == 1
    assert config_of(kernel.launches[-1]) == cfg(16, 16, 16)
    assert path.read_text() == content     # never overwritten: it may be someone else's file


def test_unwritable_cache_location_warns_and_tunes_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    tuner, kernel, _ = make_tuner(tmp_path, cache=at.ConfigCache(blocker / "cache.json"))
    with pytest.warns(at.AutotuneCacheWarning, match="cannot be written"):
        launch(tuner)
    assert kernel.launches


# ---------------------------------------------------------------------------------------- the real kernels
TUNED = {"group_conv._conv_gemm_kernel", "group_conv_weight_grad._weight_grad_kernel",
         "group_conv_weight_grad._orbit_weight_grad_kernel",
         "group_conv_depthwise._dw_forward_kernel", "group_conv_depthwise._dw_input_grad_kernel"}


def test_kernel_tuning_spaces():
    names = {n.split("kernels.", 1)[1]: t for n, t in at.KERNEL_TUNERS.items() if "gconv_triton.kernels." in n}
    assert set(names) == TUNED          # the depthwise weight gradient is not tuned (its tile fixes the sum order)
    wgrad = names["group_conv_weight_grad._weight_grad_kernel"]
    # Weight gradient: only the output tile, warps and stages vary; the reduction block BLOCK_R is the launcher's
    # constant, never a config.
    assert set(wgrad.tiles) == {"BLOCK_M", "BLOCK_N"}
    assert set(names["group_conv_weight_grad._orbit_weight_grad_kernel"].tiles) == {"BLOCK_M", "BLOCK_NS"}
    assert all("BLOCK_R" not in dict(c.blocks) for n in TUNED if "weight_grad" in n for c in names[n].configs)
    assert len(set((c.block("BLOCK_M"), c.block("BLOCK_N"), c.num_warps, c.num_stages) for c in wgrad.configs)) \
        == len(wgrad.configs)
    assert all("PRECISION" in names[n].key for n in TUNED if n.startswith("group_conv."))
    # On a Hopper GPU every GEMM kernel keeps configs of >= 64 rows and >= 4 warps (wgmma) on a narrow layer
    # (10 channels per group), whatever dimension the rows tile.
    x = torch.empty(4, dtype=torch.bfloat16)
    for name, tuner in names.items():
        if not tuner.operands:
            continue
        hopper = tuner.replace(capability=lambda device: (9, 0))
        bound = {k: 1 << 16 if k.endswith("_TOTAL") else 10 for k in tuner.key}   # pixels many, channels 10
        bound.update(x_ptr=x, dy_ptr=x, PRECISION="ieee")
        rows = next(b for b in tuner.operands[0] if b not in tuner.operands[1])   # the dot's M block
        assert any(c.block(rows) >= 64 and c.num_warps >= 4 for c in hopper.sized(bound, x.device)), name


@pytest.mark.skipif(not INTERPRETED, reason="swaps the interpreted kernels for tuned ones; on a GPU the real "
                                            "autotuner already runs in every kernel test")
@pytest.mark.parametrize("layer", [
    dict(x=(2, 2, 4, 5, 5), w=(20, 2, 4, 3, 3), group="p4", groups=1, padding=1),        # implicit GEMM
    dict(x=(2, 3, 1, 1, 9), w=(3, 1, 1, 1, 3), group="z2", groups=3, padding=(0, 1)),    # depthwise, 1-D
], ids=["gemm", "depthwise"])
def test_launchers_run_through_the_autotuner(tmp_path, monkeypatch, layer):
    """The launcher glue (grid lambdas, ``interpreter_config()``, the decorators' specs and heuristics) with the
    autotuner in front of every tuned kernel, interpreted: each launch uses the tuner's pick and forward and
    gradients are right."""
    timed = []

    def bench(run):   # later candidates "faster": the pick is not simply the first config
        run()
        timed.append(run)
        return 1.0 / len(timed)

    tuners = {}
    for module in (gconv, wgrad, depthwise):
        monkeypatch.setattr(module, "interpreter_config", lambda config: {})
        for attr in dir(module):
            name = f"gconv_triton.kernels.{module.__name__.rsplit('.', 1)[1]}.{attr}"
            if name in at.KERNEL_TUNERS:
                tuners[name] = at.KERNEL_TUNERS[name].replace(
                    fn=getattr(module, attr), bench=bench, cache=at.ConfigCache(tmp_path / "cache.json"))
                monkeypatch.setattr(module, attr, tuners[name])
    assert len(tuners) == len(TUNED)
    x = torch.randn(layer["x"], device=DEVICE, requires_grad=True)
    w = torch.randn(layer["w"], device=DEVICE, requires_grad=True)
    kw = dict(group=layer["group"], in_group=layer["group"], padding=layer["padding"], groups=layer["groups"])
    with triton_backend():
        y = gconv_triton.functional.gconv2d(x, w, **kw)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    xr, wr = x.detach().double().cpu().requires_grad_(), w.detach().double().cpu().requires_grad_()
    with torch_backend():
        ref = gconv_triton.functional.gconv2d(xr, wr, **kw)
    ref_dx, ref_dw = torch.autograd.grad(ref, (xr, wr), dy.double().cpu())
    for out, expected, what in ((y, ref, "y"), (dx, ref_dx, "dx"), (dw, ref_dw, "dw")):
        assert_close(out, expected, torch.float32, f"{what} through the autotuner")
    used = [t for t in tuners.values() if t.last_config is not None]
    # GEMM: one kernel for forward and input gradient, one for the weight gradient; depthwise: forward and input
    # gradient (its weight gradient is not tuned)
    assert len(used) == 2
    for tuner in used:
        assert tuner.last_config in tuner.configs and tuner.last_key.startswith(tuner.name)
    if layer["groups"] == 1:   # the GEMM forward leaves several candidates: they were timed and the pick cached
        assert timed and json.loads((tmp_path / "cache.json").read_text())["entries"]


def test_pretune_cli_without_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CLI would tune")
    assert pretune_cli.main(["--model", "p4cnn", "--dtype", "bf16"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pretune_cli.main(["--model", "nope"])
    assert pretune_cli.main(["--list", "--model", "wide"]) == 0
    assert "wide" in capsys.readouterr().out


def test_progress_bar_without_a_terminal():
    import io

    stream = io.StringIO()
    with pretune_cli.Progress(20, "tune", stream=stream) as bar:
        for i in range(20):
            bar.update(1, f"layer {i}")
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("tune [") and "20/20 100%" in lines[-1]


def test_no_unexpected_warnings_from_a_good_cache(tmp_path):
    tuner, _, _ = make_tuner(tmp_path)
    launch(tuner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh, _, _ = make_tuner(tmp_path)
        launch(fresh)


def test_inference_set_is_timed_forward_only():
    """The inference regime: the wide p4m layer and every P4CNN layer at batch 1 and 8, and the perf runner times
    that set forward only (whatever modes it is given), the others in every mode asked for."""
    from perf.providers import provider
    from perf.runner import CpuTimer, run_suite, set_modes

    layers = pretune_cli.model_layers("inference")
    wide = pretune_cli.model_layers("wide")[0]
    p4cnn = pretune_cli.model_layers("p4cnn")
    assert [(lay.name, lay.batch) for lay in layers if lay.group == "p4m"] == [("wide.b1", 1), ("wide.b8", 8)]
    assert all(lay == dataclasses.replace(wide, name=lay.name, batch=lay.batch) for lay in layers if lay.group == "p4m")
    assert sorted(lay.name for lay in layers if lay.group == "p4") == sorted(
        f"p4cnn.{lay.name}.b{b}" for lay in p4cnn for b in (1, 8))
    assert set_modes("inference", ("forward+backward",)) == ("forward",)
    assert set_modes("wide", ("backward", "forward")) == ("backward", "forward")
    small = pretune_cli.Layer("tiny", group="p4", in_group="p4", c_in=2, c_out=2, height=4, width=4,
                              padding=(1, 1), batch=1)
    result = run_suite({"inference": [small], "p4cnn": [small]}, [provider("bank_cudnn", "cpu")],
                       modes=("forward", "forward+backward"), dtypes=("fp32",), device="cpu",
                       timer=CpuTimer(min_time_s=0, min_runs=1), check=False, progress=None)
    modes = sorted((r["set"], r["mode"]) for r in result["records"])
    assert modes == [("inference", "forward"), ("p4cnn", "forward"), ("p4cnn", "forward+backward")]
