"""The `lab` command: one entry point, one subcommand per job (`lab --help` lists them).

    lab run notebooks/05_flow_matching.ipynb -p steps 10 [--reuse]
    lab runs 05_flow_matching --state done --where lr=0.003
    lab show 20261203-170501-1a2b3c4d

Each subcommand hands its arguments, untouched, to the `main(argv)` of the module that does the
job, so `lab run --help` is lab.commands.nbtools' own help, its errors are its own, and
`python -m lab.commands.nbtools ...` keeps working unchanged. `python -m lab ...` equals `lab ...`.
A module is imported only when its subcommand runs.
"""
import argparse
import importlib
import os
import shutil
import sys

from lab.infra.provenance import repo_root

# name: (module, function, one line for `lab --help`); None: handled here
COMMANDS = {
    "run": ("lab.commands.nbtools", "main", "execute a notebook into a run folder: NOTEBOOK [-p NAME VALUE]... [--reuse]"),
    "sweep": ("lab.commands.batch", "main", "a parameter grid over the GPUs, or a SLURM job array (--slurm)"),
    "reproduce": ("lab.commands.reproduce", "main", "every notebook on its defaults, then `lab report` (make reproduce)"),
    "report": ("lab.commands.report", "main", "rebuild reports/ from the finished runs"),
    "weights": ("lab.commands.weights", "main", "fetch|check|where|info: the embedded weights in the user cache"),
    "bench": ("lab.commands.bench", "main", "DiT step time, samples/s, memory and MFU, sphere cost"),
    "train": ("lab.train", "main", "train a flow-matching DiT on cached latents (under torchrun: -m lab train)"),
    "jupyter": (None, None, "JupyterLab on notebooks/ (other options go to `jupyter lab`)"),
    "launch": ("lab.commands.launch", "main", "torchrun command lines: one node, several (--nnodes), or a SLURM script (--slurm)"),
    "verify": ("lab.commands.verify", "main", "hash every file of a cache folder fully; set aside the bad ones"),
    "adm-eval": ("lab.commands.adm_eval", "main", "FID, sFID, IS, precision/recall of an ADM .npz against a reference batch"),
    "runs": ("lab.commands.runs_table", "runs_main", "one line per run: state, commit, changed parameters, "
             "headline metrics, time"),
    "show": ("lab.commands.runs_table", "show_main", "one run: parameters, status, metrics, tables, figures"),
}


def top_parser():
    ap = argparse.ArgumentParser(
        prog="lab", description="The latent-geometry lab. `lab COMMAND --help` gives each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {line}" for name, (_, _, line) in COMMANDS.items())
        + "\n\n`python -m lab COMMAND ...` is the same command.")
    ap.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return ap


def jupyter(argv):
    """JupyterLab on notebooks/, with the jupyter of this environment (the one that has the lab)."""
    ap = argparse.ArgumentParser(prog="lab jupyter", description="Start JupyterLab on the notebooks folder "
                                 "with this environment's jupyter. Any other option goes to `jupyter lab` "
                                 "(see `jupyter lab --help`), e.g. --port 8889 --no-browser.")
    ap.add_argument("--notebooks", default=str(repo_root() / "notebooks"), help="folder to open (default notebooks/)")
    args, rest = ap.parse_known_args(argv)
    exe = os.path.join(os.path.dirname(sys.executable), "jupyter")
    exe = exe if os.path.exists(exe) else shutil.which("jupyter")
    if exe is None:
        ap.error("no `jupyter` next to this Python or on PATH: run `make install` (jupyterlab is a dependency)")
    if not os.path.isdir(args.notebooks):
        ap.error(f"--notebooks {args.notebooks}: no such folder")
    sys.stdout.flush()
    # exec, not a child: Ctrl-C and the exit code then belong to JupyterLab alone
    os.execv(exe, [exe, "lab", args.notebooks, *rest])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        top_parser().print_help()
        return 2
    if argv[0] not in COMMANDS:
        top_parser().parse_args(argv[:1])  # --help prints the help (exit 0), else names the bad command
        return 2
    name, rest = argv[0], argv[1:]
    if name == "jupyter":
        return jupyter(rest)
    module, func, _ = COMMANDS[name]
    main_of = getattr(importlib.import_module(module), func)
    argv0, sys.argv[0] = sys.argv[0], f"lab {name}"  # the usage line of a parser that sets no prog
    try:
        if name == "train":
            from lab.trainutil import exit_process
            exit_process(main_of, rest)  # as `python -m lab.train`: ends with os._exit (gloo teardown)
        code = main_of(rest)
    except (ValueError, FileNotFoundError) as err:  # the lab's bad-input errors name what to fix
        print(f"lab {name}: error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv[0] = argv0
    return code if isinstance(code, int) else 0  # bench returns its rows: success


if __name__ == "__main__":
    sys.exit(main())
