"""Running a sweep: every unfinished run on an executor, with one line per run as it ends."""
from __future__ import annotations

import time
from pathlib import Path
from cl.sweeps.spec import RunSpec, Sweep
from cl.sweeps.status import run_status, write_manifest


def run_sweep(sweep: Sweep, executor=None, retry_failed: bool = True, log=print, wandb: bool | None = None,
              only: list[RunSpec] | None = None, only_flag: str = "--only") -> dict:
    """Run every unfinished run of the sweep (of ``only``, a selection of its runs) on the executor; returns
    counts and per-run statuses.  The manifest always lists the whole sweep, so its report shows what is missing."""
    from cl.sweeps.executors import make_executor

    from cl.train.results import finished_result, saved_note

    executor = executor or make_executor("local")
    statuses, todo = {}, []
    chosen = sweep.runs if only is None else only
    for r in chosen:
        st = run_status(sweep.out, r.id)
        if st == "finished":
            statuses[r.id] = "skipped"
        elif st == "failed" and not retry_failed:  # interrupted runs are always resumed
            statuses[r.id] = "failed"
        else:
            finished_result(Path(sweep.out) / r.id, r.id)  # a bad result.json is moved aside, the run redone
            todo.append(r)
    if todo:
        Path(sweep.out).mkdir(parents=True, exist_ok=True)
    write_manifest(sweep)
    n_skip = sum(1 for s in statuses.values() if s == "skipped")
    picked = "" if only is None else f" ({len(chosen)} selected by {only_flag})"
    log(f"sweep {sweep.name!r}: {len(sweep.runs)} runs{picked}, {n_skip} already finished, {len(todo)} to run "
        f"on {executor.describe()} -> {sweep.out}/")
    t0 = time.perf_counter()
    done = [0]

    def on_done(spec: RunSpec, rec: dict):
        done[0] += 1
        statuses[spec.id] = rec.get("status", "failed")
        if rec.get("skipped"):
            statuses[spec.id] = "skipped"
            log(f"[{done[0]}/{len(todo)}] skipped {spec.id}: finished by another process")
            return
        if statuses[spec.id] == "busy":
            log(f"[{done[0]}/{len(todo)}] busy {spec.id}: {rec.get('error')}; skipped (rerun to collect it)")
            return
        m = rec.get("metrics") or {}
        acc = m.get("avg_acc")
        extra = f"avg_acc {acc:.4f}" if isinstance(acc, (int, float)) else (rec.get("error") or "").splitlines()[0:1]
        if isinstance(extra, list):
            extra = extra[0] if extra else ""
        resumed = " (resumed)" if rec.get("resumed") else ""
        if rec.get("save_error"):
            extra = f"{extra} [{saved_note(rec)}]"
        log(f"[{done[0]}/{len(todo)}] {rec.get('status', 'failed')}{resumed} {spec.id}: {extra} "
            f"({m.get('wall_time', 0.0):.1f} s)")

    if todo:
        executor.run(todo, on_done)
    failed = [rid for rid, s in statuses.items() if s not in ("finished", "skipped", "busy")]
    busy = [rid for rid, s in statuses.items() if s == "busy"]
    n_now = sum(1 for r in todo if statuses.get(r.id) == "finished")
    summary = {"total": len(chosen), "skipped": n_skip, "ran": len(todo), "failed": failed, "busy": busy,
               "statuses": statuses, "wall_time": time.perf_counter() - t0}
    log(f"sweep {sweep.name!r} done in {summary['wall_time']:.1f} s: {n_now} finished now, "
        f"{sum(1 for s in statuses.values() if s == 'skipped')} skipped, {len(failed)} failed"
        + (f", {len(busy)} being computed by another process" if busy else ""))
    for rid in failed:
        d = Path(sweep.out) / rid
        note = next((f"see {d / n}" for n in ("failed.json", "interrupted.json") if (d / n).exists()),
                    "no failure record could be written")
        log(f"  {statuses[rid]}: {rid} ({note})")
    return summary
