"""The online protocol: one pass in small batches, test-then-train, evaluated while the stream flows.

At every step (batch ``g`` of the stream):

1. the incoming batch is predicted by the current model (eval mode, ``no_grad``): online
   (prequential) accuracy uses the model that has learned batches ``0..g-1`` only (CLOC);
2. with ``near_future_shift = S``, the same model also predicts batch ``g + S`` of the current
   experience (near-future accuracy, Hammoud et al. 2023); it learns that batch only ``S`` steps
   later, so it never trains on a batch before predicting it;
3. the batch is learned (``strategy.train_step``), unless real-time accounting is on and the
   learner is still busy with an earlier batch (Ghunaim et al. 2023: a step that costs C stream
   intervals trains on a batch only when it is free, see :func:`cl.core.metrics.realtime_schedule`;
   skipped batches are still predicted);
4. every ``eval_every`` samples: anytime evaluation on the test data of the classes seen so far
   (Koh et al. 2022), giving the anytime curve, A_auc, the anytime accuracy matrix (one row per
   evaluation point, one column per experience's test data) and forgetting over the stream.

Per-sample correctness stays on the device and is read every ``SYNC_EVERY`` steps (and at
anytime evaluations); curves are sampled every ``log_every`` samples, logged to W&B with the
number of samples seen as the step, and stored in ``result["online"]``.  Prediction, training,
near-future and anytime evaluation are timed apart (CUDA events on a GPU, no extra sync).

Streams: visible or hidden boundaries are shuffled within each experience (if
``shuffle_within_experience``); blurry and gradual streams, and time-ordered streams (experiences
with ``train_time``), are consumed in the builder's order (by timestamp when there is one).
"""
from __future__ import annotations

import copy
import time
import warnings
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

import cl.train.graphs as graphs
import cl.core.metrics as M
from cl.core.registry import ConfigError

SYNC_EVERY = 200
REFERENCES = ("er", "sgd")


class PhaseTimer:
    """Accumulated time per phase.  CPU: wall clock.  CUDA: events, resolved at ``flush``
    (called after a synchronising read), so timing adds no host synchronisation."""

    def __init__(self, device, totals: dict):
        self.cuda = device.type == "cuda"
        self.totals = totals
        self.pending = []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, name: str, start) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pending.append((name, start, ev))
        else:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def flush(self) -> None:
        if self.pending:
            self.pending[-1][2].synchronize()
            for name, a, b in self.pending:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1000.0
            self.pending = []


class _History:
    """Host copy of the per-sample 0/1 correctness of the whole stream (1 byte a sample)."""

    def __init__(self):
        self.a = np.zeros(1024, dtype=np.uint8)
        self.n = 0
        self.total = 0
        self._pos = self._cnt = 0  # cursor for count_upto (called with increasing m)

    def extend(self, v: np.ndarray) -> None:
        need = self.n + len(v)
        if need > len(self.a):
            self.a = np.resize(self.a, max(need, 2 * len(self.a)))
        self.a[self.n:need] = v
        self.n = need
        self.total += int(v.sum())

    def count_upto(self, m: int) -> int:
        """Correct predictions among the first m samples (m non-decreasing across calls)."""
        if m < self._pos:
            self._pos = self._cnt = 0
        self._cnt += int(self.a[self._pos:m].sum())
        self._pos = m
        return self._cnt

    def window(self, m: int, w: int) -> float:
        lo = max(0, m - w)
        return float(self.a[lo:m].sum() / (m - lo)) if m > lo else 0.0


def _fresh_state() -> dict:
    return {"correct": [], "seen": 0, "trained_batches": 0, "skipped_batches": 0,
            "cursor": {"batches": 0, "free_at": 0.0, "nf_correct": 0, "nf_count": 0, "next_log": 0, "next_eval": 0,
                       "seen_classes": []},
            "times": {},
            "online_acc_curve": [], "online_acc_window_curve": [], "online_acc_time_curve": [],
            "anytime": [], "anytime_time": [], "anytime_matrix": [], "anytime_forgetting_curve": [],
            "near_future_curve": []}


class OnlineLoop:
    def __init__(self, strategy, scenario, pcfg, preprocess, device, evaluate, bar, wandb, state):
        self.s, self.scenario, self.p = strategy, scenario, pcfg
        self.preprocess, self.device, self.evaluate = preprocess, device, evaluate
        self.bar = bar
        if pcfg.realtime_reference not in REFERENCES:
            raise ConfigError(f"protocol.realtime_reference: {pcfg.realtime_reference!r} is not one of {REFERENCES}")
        if pcfg.near_future_shift < 0 or pcfg.eval_every < 0 or pcfg.log_every < 0:
            raise ConfigError("protocol.near_future_shift, eval_every and log_every must be >= 0")
        if state.get("online") is None or "cursor" not in state["online"]:
            state["online"] = _fresh_state()
        self.st = st = state["online"]
        self.c = c = st["cursor"]
        if not c["next_log"]:
            c["next_log"] = pcfg.log_every
        if not c["next_eval"]:
            c["next_eval"] = pcfg.eval_every
        if pcfg.realtime and pcfg.realtime_cost > 0:
            st["realtime_cost"] = float(pcfg.realtime_cost)
        self.timer = PhaseTimer(device, st["times"])
        self.train_fn = graphs.train_step_fn(strategy, pcfg.graphs)
        self.predict_fn = graphs.predict_fn(strategy, pcfg.graphs)
        self.seen_cls = torch.zeros(scenario.n_classes, dtype=torch.bool, device=device)
        if c["seen_classes"]:
            self.seen_cls[torch.tensor(c["seen_classes"], device=device)] = True
        self.hist = _History()
        for n, bits in st["correct"]:
            self.hist.extend(np.unpackbits(bits, count=n))
        self.sub = []  # fixed test subsample per experience for anytime evaluation
        for j, e in enumerate(scenario.experiences):
            n_te = len(e.test_y)
            if pcfg.eval_subsample and n_te > pcfg.eval_subsample:
                g = torch.Generator().manual_seed(7919 + j)
                self.sub.append(torch.randperm(n_te, generator=g)[: pcfg.eval_subsample].sort().values.to(device))
            else:
                self.sub.append(None)
        self.wandb = wandb

    # -- the stream --------------------------------------------------------------------------
    def _order(self, exp, n, dev):
        tt = getattr(exp, "train_time", None)
        if tt is not None:
            order = torch.as_tensor(tt).argsort(stable=True)
            times = torch.as_tensor(tt)[order].double().cpu().numpy()
            return order.to(dev), times
        if self.p.shuffle_within_experience and self.scenario.boundaries in ("visible", "hidden"):
            return torch.randperm(n, device=dev), None
        return None, None

    def run_experience(self, i: int, exp) -> int:
        st, p, c = self.st, self.p, self.c
        x_all, y_all = self.s.train_data(exp)
        n, bs = len(y_all), p.batch_size
        dev = y_all.device
        order, self.times = self._order(exp, n, dev)
        steps = (n + bs - 1) // bs
        self.bar.start_experience(i, len(self.scenario), steps)
        correct = torch.zeros(n, dtype=torch.bool, device=dev)
        losses = torch.zeros(steps, device=dev)
        S = p.near_future_shift
        nf = torch.zeros(n, dtype=torch.bool, device=dev) if S else None
        t = exp.task_id
        self.synced = 0  # samples of this experience already copied to the host
        base = st["seen"]

        def batch(k):
            sl = slice(k * bs, min(n, (k + 1) * bs))
            return sl, (order[sl] if order is not None else sl)

        tm = self.timer
        for s in range(steps):
            sl, idx = batch(s)
            x, y = self.preprocess(x_all[idx]), y_all[idx]
            self.seen_cls[y] = True
            a = tm.start()
            correct[sl] = self.predict_fn(x, t) == y
            tm.stop("predict", a)
            if S and s + S < steps:
                a = tm.start()
                tsl, tidx = batch(s + S)
                nf[tsl] = self.predict_fn(self.preprocess(x_all[tidx]), t) == y_all[tidx]
                tm.stop("near_future", a)
            g = c["batches"] + s
            if not p.realtime or g >= c["free_at"] - 1e-9:
                if p.realtime:
                    if st.get("realtime_cost") is None:
                        st["realtime_cost"] = self._calibrate(x, y, t)
                    c["free_at"] = g + max(st["realtime_cost"], 1.0)
                a = tm.start()
                losses[s] = self.train_fn(x, y, t)
                tm.stop("train", a)
                st["trained_batches"] += 1
            else:
                st["skipped_batches"] += 1
            last = s + 1 == steps
            if (s + 1) % SYNC_EVERY == 0 or last:
                self._check_finite(losses[: s + 1], i, s)
                self._flush(correct, sl.stop, base)
            if p.eval_every and base + sl.stop >= c["next_eval"]:
                self._flush(correct, sl.stop, base)
                self._anytime(base + sl.stop)
                while c["next_eval"] <= base + sl.stop:
                    c["next_eval"] += p.eval_every
            self.bar.update()
        c["batches"] += steps
        st["seen"] += n
        st["correct"].append((n, np.packbits(self.hist.a[base:base + n])))
        c["seen_classes"] = self.seen_cls.nonzero().flatten().tolist()
        tt = getattr(exp, "train_t", None)
        if tt is not None and len(tt) == n:  # online accuracy per (home / source) task of the samples
            tt = (tt[order] if order is not None else tt).long().cpu().numpy()
            ok = self.hist.a[base:base + n]
            k = int(tt.max()) + 1 if n else 0
            tc, tn = c.setdefault("task_correct", []), c.setdefault("task_count", [])
            tc += [0] * (k - len(tc))
            tn += [0] * (k - len(tn))
            for j, (a, b) in enumerate(zip(np.bincount(tt, weights=ok, minlength=k), np.bincount(tt, minlength=k))):
                tc[j] += int(a)
                tn[j] += int(b)
            st["online_acc_per_task"] = [a / b if b else None for a, b in zip(tc, tn)]
        if S:
            c["nf_correct"] += int(nf[min(n, S * bs):].sum().item())
            c["nf_count"] += max(0, n - S * bs)
            if c["nf_count"]:
                st["near_future_curve"].append((st["seen"], c["nf_correct"] / c["nf_count"]))
        self._summarise()
        return n

    # -- host reads -----------------------------------------------------------------------------
    def _check_finite(self, losses, i, s):
        from cl.train.engine import NonFiniteLoss, nonfinite_message

        if not torch.isfinite(losses).all().item():
            raise NonFiniteLoss(nonfinite_message(i, f"by step {s}"))

    def _flush(self, correct, upto: int, base: int) -> None:
        """Copy new per-sample correctness to the host; emit the curve points it completes."""
        if upto > self.synced:
            self.hist.extend(correct[self.synced:upto].cpu().numpy().astype(np.uint8))
            self.synced = upto
        self.timer.flush()
        st, p, c = self.st, self.p, self.c
        h = self.hist
        while p.log_every and c["next_log"] <= h.n:
            m = c["next_log"]
            acc = h.count_upto(m) / m
            win = h.window(m, p.window)
            st["online_acc_curve"].append((m, acc))
            st["online_acc_window_curve"].append((m, win))
            data = {"online/acc": acc, "online/acc_window": win, "samples": m}
            if self.times is not None and 0 <= m - 1 - base < len(self.times):
                ts = float(self.times[m - 1 - base])
                st["online_acc_time_curve"].append((ts, acc))
                data["stream_time"] = ts
            self.wandb.log(data, step=m)
            c["next_log"] += p.log_every
        self.bar.update(0, online_acc=f"{h.total / max(1, h.n):.3f}")

    @torch.no_grad()
    def _anytime(self, m: int) -> None:
        """Accuracy on the test data of the classes seen so far, per experience and overall."""
        st = self.st
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        subs = []
        for e, sub in zip(self.scenario.experiences, self.sub):
            tx, ty = (e.test_x, e.test_y) if sub is None else (e.test_x[sub], e.test_y[sub])
            keep = self.seen_cls[ty].nonzero().flatten()
            subs.append(SimpleNamespace(test_x=tx[keep], test_y=ty[keep], task_id=e.task_id))
        accs = self.evaluate(subs)
        sizes = [len(x.test_y) for x in subs]
        row = [float(a) if k else None for a, k in zip(accs, sizes)]
        total = sum(sizes)
        acc = sum(round(a * k) for a, k in zip(accs, sizes)) / total if total else 0.0
        st["anytime"].append((m, acc))
        st["anytime_matrix"].append(row)
        f = M.anytime_forgetting(st["anytime_matrix"])
        st["anytime_forgetting_curve"].append((m, f))
        data = {"anytime/acc": acc, "anytime/forgetting": f, "samples": m}
        data.update({f"anytime/task_{j}": v for j, v in enumerate(row) if v is not None})
        if self.times is not None:
            ts = float(self.times[m - 1 - st["seen"]]) if 0 <= m - 1 - st["seen"] < len(self.times) else None
            if ts is not None:
                st["anytime_time"].append((ts, acc))
        self.wandb.log(data, step=m)
        st["times"]["anytime"] = st["times"].get("anytime", 0.0) + time.perf_counter() - t0

    def _summarise(self) -> None:
        st, h, T = self.st, self.hist, self.st["times"]
        st["online_acc"] = h.total / max(1, h.n)
        st["online_acc_window"] = h.window(h.n, self.p.window)
        if st["anytime"]:
            xs, ys = zip(*st["anytime"])
            st["anytime_auc"] = M.anytime_auc_samples(xs, ys)
            st["anytime_acc_last"] = ys[-1]
            st["anytime_forgetting"] = st["anytime_forgetting_curve"][-1][1]
        c = self.c
        if c["nf_count"]:
            st["near_future_acc"] = c["nf_correct"] / c["nf_count"]
        nb = max(1, c["batches"])
        st["predict_time_s"] = T.get("predict", 0.0)
        st["train_step_time_s"] = T.get("train", 0.0)
        st["near_future_time_s"] = T.get("near_future", 0.0)
        st["anytime_eval_time_s"] = T.get("anytime", 0.0)
        st["train_step_ms"] = 1000 * st["train_step_time_s"] / max(1, st["trained_batches"])
        st["predict_ms"] = 1000 * st["predict_time_s"] / nb
        ev = st["predict_time_s"] + st["near_future_time_s"] + st["anytime_eval_time_s"]
        st["online_eval_time_s"] = ev
        st["eval_cost_fraction"] = ev / max(1e-12, ev + st["train_step_time_s"])
        if self.p.realtime:
            st["realtime_k"] = c["batches"] / max(1, st["trained_batches"])

    # -- real-time accounting -------------------------------------------------------------------
    def _calibrate(self, x, y, t, warmup: int = 2, reps: int = 5) -> float:
        """Cost C of the strategy's step relative to the reference step (``realtime_reference``:
        ``er`` = the platform's ER step (batch + equal-size replay batch, reservoir buffer) on a copy of
        the model, so that ER costs 1 as in Ghunaim et al.; ``sgd`` = a plain SGD step on the batch),
        both timed on copies so the run itself is unchanged.  The median ratio is rounded to the
        nearest integer >= 1 (step costs are whole stream intervals; the raw ratio is kept as
        ``realtime_cost_measured``)."""
        dev = self.device
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if dev.type == "cuda" else None
        try:
            strat = copy.deepcopy(self.s)
            ref_model = copy.deepcopy(self.s.model)
        except Exception as e:
            warnings.warn(f"real-time accounting: cannot copy the strategy to time it ({e}); using cost 1")
            return 1.0
        ref_step = None
        if self.p.realtime_reference == "er":
            try:
                from strategies.er import ER, ERConfig

                ref = ER(ERConfig(lr=0.0, buffer_size=100, replay_batch_size=len(y)), ref_model, self.s.info)
                ref.setup()
                ref_step = lambda: ref.train_step(x, y, t)  # noqa: E731
            except Exception as e:
                warnings.warn(f"real-time accounting: ER reference unavailable ({e}); timing a plain SGD step")
        if ref_step is None:
            opt = torch.optim.SGD([q for q in ref_model.parameters() if q.requires_grad], lr=0.0)
            if hasattr(ref_model, "observe"):
                ref_model.observe(y)

            def ref_step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(ref_model(x).float(), y).backward()
                opt.step()

        def timed(fn):
            out = []
            for r in range(warmup + reps):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                a = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if r >= warmup:
                    out.append(time.perf_counter() - a)
            return float(np.median(out))

        try:
            raw = timed(lambda: strat.train_step(x, y, t)) / max(1e-9, timed(ref_step))
        finally:
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.st["realtime_cost_measured"] = raw
        return float(max(1, round(raw)))
