"""The ``cl`` command line: ``cl run``, ``cl list`` (and ``cl sweep`` / ``cl report`` / ``cl reproduce``)."""
from __future__ import annotations

import argparse
import importlib
import sys

from cl.core.registry import ConfigError, backbones, config_fields, load_plugin_file, scenarios, strategies

EXTRA_COMMANDS = ("sweeps.cli", "sweeps.report", "sweeps.reproduce")  # modules cl.<name> that provide add_cli(subparsers)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="YAML run file (e.g. runs/er-split-mnist.yaml)")
    p.add_argument("--strategy", "-s")
    p.add_argument("--scenario", "-d")
    p.add_argument("--backbone", "-b")
    p.add_argument("--protocol", "-p", choices=("offline", "online"))
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", "-o", help="output folder (default: results/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field: section.field=value (e.g. strategy.lr=0.05, "
                        "protocol.epochs=3) or a field name unique to one section; repeatable")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers strategies/scenarios/backbones; repeatable")
    p.add_argument("--no-wandb", action="store_true", help="disable W&B for this run")
    p.add_argument("--force", action="store_true", help="run again even if this run's result.json exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def raw_from_args(args) -> dict:
    from cl.core.config import load_yaml

    raw = load_yaml(args.file) if args.file else {}
    for sec in ("strategy", "scenario", "backbone", "protocol"):
        val = getattr(args, sec)
        if val:
            cur = raw.get(sec)
            raw[sec] = {**(cur if isinstance(cur, dict) else {}), "name": val}
    for k in ("seed", "device", "out"):
        if getattr(args, k) is not None:
            raw[k] = getattr(args, k)
    if args.no_wandb:
        raw["wandb"] = "off"
    return raw


def print_result_table(results: list[dict], file=None) -> None:
    file = file or sys.stdout
    hdr = f"{'run':<48} {'status':<9} {'avg_acc':>8} {'forget':>7} {'online':>7} {'time_s':>7}"
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in results:
        m = r.get("metrics", {})
        on = m.get("online_acc")
        print(f"{r['run_id'][:48]:<48} {r.get('status', '?'):<9} {m.get('avg_acc', float('nan')):>8.4f} "
              f"{m.get('forgetting', float('nan')):>7.4f} {'' if on is None else f'{on:.4f}':>7} "
              f"{m.get('wall_time', 0):>7.1f}", file=file)


def cmd_run(args) -> int:
    from cl.api import run
    from cl.core.config import apply_overrides, check_device, resolve
    from cl.train.results import saved_note

    for f in args.plugin:
        load_plugin_file(f)
    resolved = resolve(apply_overrides(raw_from_args(args), args.overrides))
    check_device(resolved.get("device"), available=True)
    res = run(resolved, progress=not args.quiet, force=args.force, wait=True)  # waits for another process's run
    if res.skipped:
        print(f"{res.run_id} already finished: {res.paths.result} (use --force to run again)")
        print_result_table([res.raw])
        return 0
    print_result_table([res.raw])
    print(f"results: {res.paths.run_dir}")
    if res.status == "interrupted":
        print(f"run interrupted: rerun the same command to resume it ({saved_note(res.raw)})", file=sys.stderr)
        return 130
    if not res.finished:
        print(f"run {res.status}: {res.error} ({saved_note(res.raw)})", file=sys.stderr)
        return 1
    return 0


def cmd_list(args) -> int:
    for f in args.plugin:
        load_plugin_file(f)
    regs = {"strategies": strategies, "scenarios": scenarios, "backbones": backbones}
    kinds = [args.kind] if args.kind else list(regs)
    for kind in kinds:
        reg = regs[kind]
        print(f"{kind}:")
        for name in reg.names():
            e = reg.entries[name]
            print(f"  {name:<24} {e.description}")
            if args.verbose:
                for fname, default, typ in config_fields(e.config):
                    print(f"      {fname} = {default!r}")
    if not args.kind:
        from cl.core.config import ProtocolConfig

        print("protocols:\n  offline                  epochs per experience\n"
              "  online                   one pass, test-then-train")
        if args.verbose:
            for fname, default, _ in config_fields(ProtocolConfig):
                print(f"      {fname} = {default!r}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cl", description="Continual-learning experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one strategy on one scenario")
    add_run_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("list", help="list strategies, scenarios and backbones")
    p.add_argument("kind", nargs="?", choices=("strategies", "scenarios", "backbones"))
    p.add_argument("--verbose", "-v", action="store_true", help="also list each config field and default")
    p.add_argument("--plugin", action="append", default=[])
    p.set_defaults(func=cmd_list)
    for name in EXTRA_COMMANDS:
        try:
            mod = importlib.import_module(f"cl.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"cl.{name}":
                raise
            continue
        mod.add_cli(sub)
    args = parser.parse_args(argv)
    from cl.core.signals import sigterm_as_interrupt

    sigterm_as_interrupt()  # kill / a scheduler's preemption: interrupted and resumable, as Ctrl-C
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: runs that were running are marked interrupted; rerun the same command to resume "
              "them from their last checkpoint", file=sys.stderr)
        return 130
    except OSError as e:  # a results folder that is read-only, a full disk, ...: one line, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
