"""``cl sweep FILE``: expand a sweep file, run what is unfinished, print the report."""
from __future__ import annotations

import sys
from pathlib import Path
from cl.sweeps.runner import run_sweep
from cl.sweeps.spec import load_sweep, select_runs
from cl.sweeps.status import print_dry_run


def add_cli(sub) -> None:
    p = sub.add_parser("sweep", help="run a YAML grid of runs (strategies x scenarios x seeds x ...)",
                       description="Expand a sweep file into runs and run the unfinished ones. "
                                   "Finished runs are skipped, interrupted ones resume from their checkpoint.")
    p.add_argument("file", help="sweep file, e.g. runs/quickstart.yaml")
    p.add_argument("--dry-run", "-n", action="store_true", help="print the expanded runs and their ids, run nothing")
    p.add_argument("--executor", "-e", choices=("local", "ray"), help="where runs execute (default: local)")
    p.add_argument("--workers", "-j", type=int,
                   help="local: worker processes (default: one per visible GPU, 1 on CPU; 0 = in this process); "
                        "ray on a local instance: CPUs to use")
    p.add_argument("--threads", type=int, help="torch threads of every run (sets the run key `threads`, part of "
                                               "the run id; default 1, whatever the number of workers)")
    p.add_argument("--address", help="ray: address of an existing cluster (default: start a local Ray instance)")
    p.add_argument("--gpus-per-run", type=float, help="ray: GPUs per run (default: 1 if the cluster has GPUs)")
    p.add_argument("--cpus-per-run", type=float, help="ray: CPUs per run (default 1)")
    p.add_argument("--max-retries", type=int, help="retries of a run whose worker was lost (default 3 ray, 1 local)")
    p.add_argument("--out", "-o", help="output folder (default: the file's `out`, else results/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every run (as in `cl run --set`)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py")
    p.add_argument("--no-wandb", action="store_true", help="disable W&B for every run")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
    p.add_argument("--only", action="append", default=[], metavar="KEY=V[,V...]",
                   help="run only the runs whose KEY (strategy, seed, strategy.buffer_size, ...) is one of the values; "
                        "repeat to combine (all must match); the report still lists the whole sweep")
    p.add_argument("--no-report", action="store_true", help="do not write/print the report at the end")
    p.add_argument("--records", metavar="DIR",
                   help="committed result records: runs with a valid record in DIR/<sweep name>/ and no result in "
                        "the results folder get it back (and are skipped); the finished runs are copied there "
                        "after the sweep (a few KB each, to commit)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    overrides = list(args.overrides) + (["wandb=off"] if args.no_wandb else [])
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    sweep = load_sweep(args.file, overrides, args.out, args.plugin)
    if args.threads is None and sweep.executor.get("threads") is not None:  # executor.threads: every run's
        sweep = load_sweep(args.file, overrides + [f"threads={sweep.executor['threads']}"], args.out, args.plugin)
    only = select_runs(sweep, args.only) if args.only else None
    if args.dry_run:
        if args.records:
            _print_records(sweep, args.records)
        print_dry_run(sweep, only=only)
        return 0
    if args.records:
        _restore(sweep, args.records)
    from cl.sweeps.executors import make_executor

    ex = dict(sweep.executor)
    ex.pop("threads", None)
    for k in ("executor", "workers", "address", "gpus_per_run", "cpus_per_run", "max_retries"):
        v = getattr(args, k)
        if v is not None:
            ex["kind" if k == "executor" else k] = v
    kind = ex.pop("kind", "local")
    plugins = [str(Path(p).resolve()) if Path(p).is_file() else p for p in args.plugin] + list(sweep.plugins)
    executor = make_executor(kind, plugins=plugins, **ex)
    try:
        summary = run_sweep(sweep, executor, retry_failed=not args.skip_failed, log=lambda s: print(s, flush=True),
                            only=only)
    finally:  # an interrupted sweep still copies the runs it finished
        if args.records:
            _archive(sweep, args.records)
    if sweep.report and not args.no_report:
        from cl.sweeps.report import make_report
        from cl.sweeps.status import write_manifest

        write_manifest(sweep)  # another sweep into the same folder may have replaced it meanwhile: report this one
        rep = make_report(sweep.out, wandb=None if not args.no_wandb else False)
        print()
        print(rep["markdown_main"])
        print(f"report: {rep['path']}" if rep.get("path") else "report: not written (see the warning above)")
    return 1 if summary["failed"] else 0


def _records_of(sweep):
    """The sweep as the records module's entry (its runs, results folder and name)."""
    from types import SimpleNamespace

    return SimpleNamespace(sweep=sweep, out=sweep.out, name=sweep.name)


def _print_records(sweep, root) -> None:
    from cl.sweeps.reproduce_records import archived
    from cl.sweeps.status import run_status

    ids = [r.id for r in sweep.runs if run_status(sweep.out, r.id) != "finished"]
    have = archived(_records_of(sweep), Path(root), ids)
    print(f"records: {len(have)} of the {len(ids)} runs not finished in {sweep.out} have a valid record in "
          f"{Path(root) / sweep.name} (a real run puts them back and skips them)")


def _restore(sweep, root) -> None:
    from cl.sweeps.reproduce_records import restore

    try:
        got = restore(_records_of(sweep), Path(root))
    except OSError as err:
        print(f"warning: cannot put the records of {Path(root) / sweep.name} back into {sweep.out}: "
              f"{err.strerror or err}", file=sys.stderr)
        return
    if got:
        print(f"records: {len(got)} finished run(s) put back from {Path(root) / sweep.name}", flush=True)


def _archive(sweep, root) -> None:
    from cl.sweeps.reproduce_records import archive

    try:
        n = archive(_records_of(sweep), Path(root))
    except OSError as err:
        print(f"warning: cannot copy the finished runs to {Path(root) / sweep.name}: {err.strerror or err}",
              file=sys.stderr)
        return
    print(f"records: {n} record(s) written or updated in {Path(root) / sweep.name}", flush=True)
