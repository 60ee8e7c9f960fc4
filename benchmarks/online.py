"""Online ER at batch 10 with a replay batch of 10: the platform against a hand-written PyTorch loop
and Avalanche 0.6.0's online replay (``split_online_stream`` + ``Replay``), side by side in one process.

    python benchmarks/online.py                       # both models, 2,000 samples each, auto device
    python benchmarks/online.py --models mlp --samples 5000 --device cuda
    python benchmarks/online.py --data cifar10        # split-cifar10 from the data root instead of random uint8
    python benchmarks/online.py --models resnet18r --strategies slda,gdumb,agem:memory=reservoir,lwf,derpp

Every runner learns the same class-incremental stream (5 tasks x 2 classes, 32x32x3 uint8 images;
random pixels unless ``--data cifar10``) once, in batches of 10, replaying 10 buffered samples per
step from a 500-sample buffer, SGD lr 0.1.  Runners:

* ``plain``: a hand-written loop (data and buffer on the device, host-side reservoir draws);
* ``platform step``: the ``er`` strategy's ``train_step`` (device reservoir, no host sync);
* ``platform step + graphs`` (CUDA only): the same step captured as a CUDA graph (cl/graphs.py);
* ``platform online``: the full online protocol through the engine (``Run``), which also predicts
  every batch before learning it (one extra forward: test-then-train) and keeps the online metrics;
* ``avalanche``: ``Replay`` (mem_size 500, train_mb_size 10: 10 new + 10 replayed samples) trained on
  ``split_online_stream(..., experience_size=10)``, with an empty evaluator (no metrics, no loggers).

* ``--strategies a,b,c``: any registered strategy's online step, as the online protocol runs it
  (test-then-train: ``predict`` of the batch in eval mode, then ``train_step``), each beside
  ``er (test-then-train)``, the ER step timed the same way, so that the "vs ER" column is the real-time cost
  ratio C of Ghunaim et al. (ER's samples/s over the strategy's).  A spec is ``name`` or
  ``name:field=value:field=value`` (YAML values); ``lr`` 0.1, ``buffer_size`` 500 and
  ``replay_batch_size`` 10 are set where the strategy has them.  The boundary hooks run at the 5 task ends
  (LwF's teacher, A-GEM's episodic memory, GDumb's retraining) and are timed apart ("hooks s", not in
  samples/s).  Frozen-feature strategies (``slda``, ``ncm``) get the frozen backbone's features computed
  once beforehand, as the engine's feature cache does, and time their step on them.

Samples/s counts incoming stream samples.  The runners run in interleaved rounds (so that load from
other processes on shared cores hits them alike) and the best round of each is reported.  Ratios are printed against the plain loop and Avalanche.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BS, REPLAY_BS, BUFFER, LR, N_TASKS = 10, 10, 500, 0.1, 5


# -- data ---------------------------------------------------------------------------------------------
def make_stream(n: int, data: str, seed: int = 0):
    """(x uint8 (n,3,32,32), y long (n,)) ordered by task: 5 tasks x 2 classes, n/5 samples each."""
    if data == "cifar10":
        import cl.core.registry as R
        import scenarios  # noqa: F401  (registers the datasets)
        from cl.core.config import resolve, section_config

        cfg = resolve({"scenario": {"name": "split-cifar10"}})
        sc = R.scenarios.get("split-cifar10").obj(section_config(cfg, "scenario"), seed)
        per = n // len(sc)
        xs = [e.train_x[:per] for e in sc.experiences]
        ys = [e.train_y[:per] for e in sc.experiences]
        return torch.cat(xs), torch.cat(ys)
    g = torch.Generator().manual_seed(seed)
    per = n // N_TASKS
    ys = [torch.tensor([2 * t, 2 * t + 1]).repeat(per // 2 + 1)[:per] for t in range(N_TASKS)]
    y = torch.cat(ys)
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, y


def build_model(kind: str, device):
    from cl.models.backbones import build_backbone
    from cl.models.backbones.small import MLPConfig, ResNetConfig
    from cl.models.model import Model, build_head

    if kind == "mlp":
        bb = build_backbone("mlp", MLPConfig(hidden=256, layers=2), (3, 32, 32))
    else:
        bb = build_backbone("resnet18r", ResNetConfig(nf=20), (3, 32, 32))
    return Model(bb, build_head("linear", bb.out_dim, 10)).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- runners ------------------------------------------------------------------------------------------
def run_plain(model, x, y, device):
    """Hand-written online ER: device data and buffer, reservoir draws on the host (numpy)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    bx = torch.zeros((BUFFER,) + tuple(x.shape[1:]), dtype=torch.uint8, device=device)
    by = torch.zeros(BUFFER, dtype=torch.long, device=device)
    rng = np.random.default_rng(0)
    n_seen = 0
    x, y = x.to(device), y.to(device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(y), BS):
        xb, yb = x[i:i + BS], y[i:i + BS]
        model.observe(yb)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb.float().div_(255)), yb)
        size = min(n_seen, BUFFER)
        if size:
            j = torch.from_numpy(rng.integers(0, size, REPLAY_BS)).to(device, non_blocking=True)
            loss = loss + F.cross_entropy(model(bx[j].float().div_(255)), by[j])
        loss.backward()
        opt.step()
        pos = np.arange(n_seen, n_seen + len(yb))
        slot = np.where(pos < BUFFER, pos, (rng.random(len(yb)) * (pos + 1)).astype(np.int64))
        keep = slot < BUFFER
        if keep.any():
            s = torch.from_numpy(slot[keep]).to(device, non_blocking=True)
            k = torch.from_numpy(np.nonzero(keep)[0]).to(device, non_blocking=True)
            bx[s] = xb[k]
            by[s] = yb[k]
        n_seen += len(yb)
    sync(device)
    return time.perf_counter() - t0


def _er_strategy(model, device):
    from cl.core.strategy import RunInfo
    from strategies.er import ER, ERConfig

    s = ER(ERConfig(lr=LR, buffer_size=BUFFER, replay_batch_size=REPLAY_BS), model,
           RunInfo(n_classes=10, input_shape=(3, 32, 32), device=device, seed=0, protocol="online"))
    s.setup()
    return s


def run_platform_step(model, x, y, device, graphs=False):
    from cl.train import graphs as G

    s = _er_strategy(model, device)
    step = G.train_step_fn(s, graphs)
    x, y = x.to(device), y.to(device)
    losses = torch.zeros((len(y) + BS - 1) // BS, device=device)
    sync(device)
    t0 = time.perf_counter()
    for k, i in enumerate(range(0, len(y), BS)):
        losses[k] = step(x[i:i + BS].float().div_(255), y[i:i + BS])
    sync(device)
    dt = time.perf_counter() - t0
    assert torch.isfinite(losses).all()
    return dt


def run_platform_online(kind, x, y, device, graphs=False):
    """The full engine: online protocol (test-then-train) on a registered in-memory scenario."""
    from cl.core.config import resolve
    from cl.train.engine import Run
    from cl.core.registry import scenarios
    from cl.core.streams import Experience, Scenario

    name = "bench-online-stream"
    if name not in scenarios.entries:
        @scenarios.register(name, None)
        def _sc(cfg, seed):
            xx, yy = _sc.data
            per = len(yy) // N_TASKS
            exps = [Experience(xx[t * per:(t + 1) * per], yy[t * per:(t + 1) * per], xx[:20], yy[:20],
                               [2 * t, 2 * t + 1], None, index=t) for t in range(N_TASKS)]
            return Scenario(name, exps, n_classes=10, input_shape=(3, 32, 32), class_order=list(range(10)),
                            boundaries="hidden")
    scenarios.get(name).obj.data = (x, y)
    bb = {"name": "mlp", "hidden": 256, "layers": 2} if kind == "mlp" else {"name": "resnet18r", "nf": 20}
    raw = {"strategy": {"name": "er", "lr": LR, "buffer_size": BUFFER, "replay_batch_size": REPLAY_BS},
           "scenario": {"name": name}, "backbone": bb, "device": str(device), "wandb": "off",
           "protocol": {"name": "online", "batch_size": BS, "checkpoint": False, "graphs": graphs,
                        "eval_batch_size": 20, "log_every": 500}}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = Run(resolve(raw), progress=False, out_dir=d).execute()
    assert res["status"] == "finished", res.get("error")
    m = res["metrics"]
    return m["train_time"], m


def run_avalanche(model, x, y, device):
    warnings.filterwarnings("ignore")
    from avalanche.benchmarks.scenarios import split_online_stream
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training import Replay
    from avalanche.training.plugins import EvaluationPlugin

    per = len(y) // N_TASKS
    xf = x.float().div_(255)
    ds = torch.utils.data.TensorDataset(xf, y)
    ds.targets = y.tolist()  # Avalanche wraps any dataset with a `targets` list
    # class order fixed to 0..9 in pairs: the same stream order of tasks as the other runners
    bm = class_incremental_benchmark({"train": ds, "test": ds}, class_order=list(range(10)),
                                     num_experiences=N_TASKS)
    stream = split_online_stream(bm.train_stream, experience_size=BS, shuffle=False, seed=0)
    strat = Replay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                   criterion=torch.nn.CrossEntropyLoss(), mem_size=BUFFER, train_mb_size=BS,
                   train_epochs=1, device=device, evaluator=EvaluationPlugin())
    assert len(bm.train_stream[0].dataset) == per
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for exp in stream:
        strat.train(exp)
        n += len(exp.dataset)
    sync(device)
    return time.perf_counter() - t0


def _parse_spec(spec: str):
    """``name:field=value:...`` -> (name, {field: YAML value})."""
    import yaml

    name, *kv = spec.split(":")
    over = {}
    for item in kv:
        k, _, v = item.partition("=")
        over[k] = yaml.safe_load(v)
    return name, over


def make_strategy_runner(spec: str, kind: str, x, y, device, fresh):
    """``(run() -> (stream seconds, hook seconds))`` for one registered strategy on this stream (see the docstring)."""
    import dataclasses

    import strategies as _registered  # noqa: F401  (registers the built-in strategies)
    from cl.core.config import build_dataclass
    from cl.core.registry import strategies
    from cl.core.strategy import RunInfo
    from cl.core.streams import Experience, Scenario
    from cl.models.backbones import build_backbone

    name, over = _parse_spec(spec)
    entry = strategies.get(name)
    fields = {f.name for f in dataclasses.fields(entry.config)}
    raw = {k: v for k, v in {"lr": LR, "buffer_size": BUFFER, "replay_batch_size": REPLAY_BS}.items() if k in fields}
    raw.update(over)
    cls = entry.obj
    per = len(y) // N_TASKS
    frozen = bool(cls.frozen_features or raw.get("frozen_backbone"))

    def run():
        torch.manual_seed(0)
        cfg = build_dataclass(entry.config, dict(raw), f"strategy {name!r}")
        base = fresh()
        xs = x.to(device).float().div_(255)
        if frozen:  # the engine feeds cached features of the frozen backbone
            with torch.no_grad():
                base.eval()
                xs = torch.cat([base.features(xs[i:i + 500]) for i in range(0, len(xs), 500)]).flatten(1)
            shape = (xs.shape[1],)
            backbone = build_backbone("identity", None, shape)
        else:
            shape = (3, 32, 32)
            backbone = base.backbone
        ys = y.to(device)
        exps = [Experience(xs[t * per:(t + 1) * per], ys[t * per:(t + 1) * per], xs[:20], ys[:20],
                           [2 * t, 2 * t + 1], None, index=t) for t in range(N_TASKS)]
        sc = Scenario("bench-online", exps, n_classes=10, input_shape=shape, class_order=list(range(10)),
                      modality="features" if frozen else "image")
        model = cls.build_model(cfg, backbone, sc).to(device)
        s = cls(cfg, model, RunInfo(n_classes=10, input_shape=shape, device=device, seed=0, protocol="online",
                                    n_experiences=N_TASKS))
        s.setup()
        losses = torch.zeros((len(ys) + BS - 1) // BS, device=device)
        stream = hooks = 0.0
        k = 0
        for e in exps:
            sync(device)
            t0 = time.perf_counter()
            s.before_experience(e)
            sync(device)
            t1 = time.perf_counter()
            for i in range(0, len(e.train_y), BS):
                xb, yb = e.train_x[i:i + BS], e.train_y[i:i + BS]
                model.eval()
                with torch.no_grad():
                    s.predict(xb, None).argmax(-1)
                model.train()
                losses[k] = s.train_step(xb, yb, None)
                k += 1
            sync(device)
            t2 = time.perf_counter()
            s.after_experience(e)
            sync(device)
            stream += t2 - t1
            hooks += (t1 - t0) + time.perf_counter() - t2
        assert torch.isfinite(losses).all(), f"{spec}: non-finite loss"
        return stream, hooks

    return run


# -- main ---------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,resnet18r")
    ap.add_argument("--samples", type=int, default=1000, help="stream samples per runner, resnet18r")
    ap.add_argument("--mlp-samples", type=int, default=3000, help="stream samples per runner, MLP")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round is reported")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="random", choices=("random", "cifar10"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-avalanche", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated runners to skip")
    ap.add_argument("--out", default=None, help="append a Markdown table to this file")
    ap.add_argument("--strategies", default="", help="comma-separated registered strategies (name or "
                    "name:field=value:...) timed test-then-train beside 'er (test-then-train)'")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if a.threads:
        torch.set_num_threads(a.threads)
    skip = set(filter(None, a.skip.split(",")))
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads")
    print(f"device: {device} ({machine}); torch {torch.__version__}; data: {a.data}")
    rows = []
    for kind in a.models.split(","):
        n = a.mlp_samples if kind == "mlp" else a.samples
        n -= n % (N_TASKS * BS)
        x, y = make_stream(n, a.data)
        torch.manual_seed(0)  # the same initial weights as the engine's run (seed 0: backbone, then head)
        init = build_model(kind, "cpu").state_dict()

        def fresh():
            torch.manual_seed(0)
            m = build_model(kind, device)
            m.load_state_dict(init)
            return m

        runners = [("plain", lambda: run_plain(fresh(), x, y, device)),
                   ("platform step", lambda: run_platform_step(fresh(), x, y, device))]
        if device.type == "cuda":
            runners.append(("platform step + graphs", lambda: run_platform_step(fresh(), x, y, device, True)))
        runners.append(("platform online", lambda: run_platform_online(kind, x, y, device)[0]))
        if device.type == "cuda":
            runners.append(("platform online + graphs", lambda: run_platform_online(kind, x, y, device, True)[0]))
        if not a.no_avalanche:
            runners.append(("avalanche", lambda: run_avalanche(fresh(), x, y, device)))
        specs = [p for p in a.strategies.split(",") if p]
        hooks: dict[str, float] = {}
        if specs:
            for spec in (["er"] if "er" not in specs else []) + specs:
                label = f"{spec} (test-then-train)"
                fn = make_strategy_runner(spec, kind, x, y, device, fresh)

                def timed(fn=fn, label=label):
                    stream, hook = fn()
                    hooks[label] = min(hooks.get(label, float("inf")), hook)
                    return stream

                runners.append((label, timed))
        runners = [(name, fn) for name, fn in runners if name not in skip]
        best: dict[str, float] = {}
        # rounds interleave the runners, so that load from other processes hits them alike; best of rounds
        for r in range(a.rounds):
            for name, fn in runners:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dt = fn()
                best[name] = max(best.get(name, 0.0), n / dt)
                print(f"  round {r + 1} {kind:<10} {name:<26} {n / dt:>9.1f} samples/s  ({dt:.1f} s, {n} samples)",
                      flush=True)
        er_ref = best.get("er (test-then-train)")
        for name, v in best.items():
            rows.append((kind, n, name, v, v / best["plain"] if "plain" in best else float("nan"),
                         v / best["avalanche"] if "avalanche" in best else float("nan"),
                         er_ref / v if er_ref and name in hooks else float("nan"), hooks.get(name)))
    print()
    table = ["| model | samples | runner | samples/s | vs plain loop | vs Avalanche | cost vs ER (C) | hooks s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, n, name, v, rp, ra, c, hk in rows:
        cs = f"{c:.2f}" if c == c else ""
        hs = f"{hk:.2f}" if hk is not None else ""
        table.append(f"| {kind} | {n} | {name} | {v:,.1f} | {rp:.2f}x | {ra:.2f}x | {cs} | {hs} |")
    print("\n".join(table))
    if a.out:
        with open(a.out, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {device} ({machine}), "
                    f"data {a.data}\n\n" + "\n".join(table) + "\n")
    return rows


if __name__ == "__main__":
    main()
