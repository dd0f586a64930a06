"""Mutation testing (mutmut) over the modules where a silent bug changes a finding; `make mutation`.

Each module runs in its own scratch copy (build/mutation/<module>/: lab/, the module's fast tests,
pyproject.toml and a generated setup.cfg), one module after the other, against only the fast
test files that cover it (MODULES). Prints killed / total per module and overall, and the
surviving mutants' names (`cd build/mutation/<module> && mutmut show <name>` shows the diff).

    python tests/mutation_run.py                   # every module
    python tests/mutation_run.py geometry flows    # some of them
    MUTATION_CHILDREN=2 python tests/mutation_run.py
    python tests/mutation_run.py --survivors metrics   # only the last run's survivors (after adding tests)

--survivors re-runs only the mutants that survived the module's last run (its result.json) and
counts the others as killed then; when the source file changed since, mutant names no longer
match and the whole module runs. Equivalent mutants, judged by hand: tests/mutation_equivalents.md.
Not part of the test suite (pytest collects test_*.py only) and not run in CI.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> (source file, fast tests that cover it, mutant-name patterns: None = every function)
MODULES = {
    "geometry": ("lab/geometry.py", ["tests/test_geometry.py", "tests/test_mutants_more.py"], None),
    "flows": ("lab/flows.py", ["tests/test_flows_samplers.py"], None),
    "samplers": ("lab/samplers.py", ["tests/test_flows_samplers.py", "tests/test_evaluate.py"], None),
    # the generator's step only: the loop, checkpoints and CLI are covered by test_train's slow tests
    "train": ("lab/train.py", ["tests/test_flows_samplers.py", "tests/test_train.py"],
              ["lab.train.x_step_seed*", "lab.train.x_global_batch*", "lab.train.x_fm_step_loss*",
               "lab.train.x_default_precision*", "lab.train.x_model_autocast*"]),
    "evaluate": ("lab/evaluate.py", ["tests/test_evaluate.py", "tests/test_generation_eval.py", "tests/test_mutants_more.py"], None),
    # stub networks only: the real-network tests (marked real_nets, and test_metrics_values) load
    # EfficientNet and DINO in every mutant's fresh process and pin feature_nets rather than this module
    "metrics": ("lab/metrics.py", ["tests/test_metrics_more.py", "tests/test_metrics.py",
                                "tests/test_metrics_linear_probe.py", "tests/test_metrics_wiring.py",
                                "tests/test_metrics_sharded.py"], None),
    # the probes' numbers, not their plots (figure layout is checked by eye) nor default_distances (real networks)
    "probes": ("lab/probes.py", ["tests/test_probes.py", "tests/test_probe_values.py", "tests/test_probes_width.py",
                                "tests/test_probes_wiring.py", "tests/test_dit.py"],
               [f"lab.probes.x_{f}__mutmut_*" for f in (
                   "_norm", "_dir", "_encode", "rescale_norms", "angular_noise", "component_swap", "same_class_pairs",
                   "direction_magnitude_probe", "standardize_channels", "norm_stats", "linear_path_norm_dip",
                   "radial_share_along_t", "encode_dataset", "linear_probe_features", "_grid", "pca_rgb",
                   "width_floor", "fm_eval_loss", "width_check")]),
    "claims": ("lab/claims.py", ["tests/test_claims.py", "tests/test_claims_rules.py"], None),
    "power": ("lab/power.py", ["tests/test_power.py", "tests/test_claims.py"], None),  # the MDE and seeds-needed math
    "claim_keys": ("lab/claim_keys.py", ["tests/test_claims.py", "tests/test_record.py"], None),
}
TIMEOUT_MULTIPLIER, TIMEOUT_CONSTANT = 3.0, 3.0
PYTEST_DESELECT = {  # slow tests the fast selection leaves out (subprocesses; 300 training steps)
    "train": ["-k", "not sigkill and not torchrun"],
    "probes": ["-k", "not narrow_dit_cannot_fit"],
    "metrics": ["-m", "not gpu and not real_nets"],
}


def setup_cfg(source, tests, extra):
    lines = ["[mutmut]", "source_paths = lab", f"only_mutate = {source}",
             "pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    args = ["-x", "-q", "-p", "no:cacheprovider", "-W", "ignore"] + extra
    lines += ["pytest_add_cli_args ="] + [f"    {a}" for a in args]
    lines += ["also_copy =", "    notebooks"]  # test_claims reads the notebooks' names
    lines += ["process_isolation = fork", "use_git_change_detection = false", "track_dependencies = false"]
    # mutmut stops a mutant's tests after (their unmutated time + constant) x multiplier of wall time (2x
    # that in CPU time) and counts it killed. The margin covers what a fresh process pays that the timed
    # run did not (a network built on first use, a gloo group): at multiplier 1, constant 1 a 2 s test
    # had 2.05 s
    lines += [f"timeout_multiplier = {TIMEOUT_MULTIPLIER}", f"timeout_constant = {TIMEOUT_CONSTANT}", ""]
    return "\n".join(lines)


def prepare(name):
    source, tests, _ = MODULES[name]
    work = ROOT / "build" / "mutation" / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    shutil.copytree(ROOT / "lab", work / "lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for t in ["tests/conftest.py", "tests/stand_ins.py"] + tests:  # stand_ins: helpers the tests share
        shutil.copy(ROOT / t, work / t)
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    (work / "setup.cfg").write_text(setup_cfg(source, tests, PYTEST_DESELECT.get(name, [])))
    return work


def previous_survivors(name, digest):
    """(killed, total, survivor names) of the module's last run on this very source, else None."""
    try:
        last = json.loads((ROOT / "build" / "mutation" / name / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if last.get("source_sha256") != digest:
        return None
    return last["killed"], last["total"], sorted(last["survivors"])


def run_module(name, children, survivors_only=False):
    source, tests, patterns = MODULES[name]
    if not (ROOT / source).exists() or not all((ROOT / t).exists() for t in tests):
        print(f"{name}: skipped ({source} or its tests are missing)")
        return None
    digest = hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
    before = previous_survivors(name, digest) if survivors_only else None
    if survivors_only and before is None:
        print(f"{name}: no result.json for this source; running every mutant")
    if before is not None:
        if not before[2]:
            print(f"{name}: no survivors last time ({before[0]}/{before[1]} killed)")
            return before[0], before[1]
        patterns = before[2]
    work = prepare(name)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.time()
    subprocess.run(mutmut + ["run", "--max-children", str(children)] + (patterns or []), cwd=work, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    out = subprocess.run(mutmut + ["results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True)
    status = {}
    for line in out.stdout.splitlines():
        if ": " in line:
            key, value = line.strip().rsplit(": ", 1)
            status[key] = value
    if patterns:
        import fnmatch
        status = {k: v for k, v in status.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    counted = {k: v for k, v in status.items() if v not in ("not checked", "skipped")}
    killed = sum(v in ("killed", "timeout", "segfault") for v in counted.values())
    survivors = sorted(k for k, v in counted.items() if v not in ("killed", "timeout", "segfault"))
    minutes = (time.time() - t0) / 60
    total = len(counted)
    if before is not None:  # the mutants not re-run were killed last time
        print(f"{name}: {killed}/{total} of last run's survivors killed now")
        killed, total = killed + before[0], before[1]
    score = killed / total if total else float("nan")
    print(f"{name}: {killed}/{total} killed ({100 * score:.1f}%) in {minutes:.1f} min")
    for k in survivors:
        print(f"    {status[k]:<10} {k}")
    (work / "result.json").write_text(json.dumps(dict(killed=killed, total=total, minutes=minutes, source_sha256=digest,
                                                      survivors={k: status[k] for k in survivors}), indent=1))
    return killed, total


def main(argv):
    survivors_only = "--survivors" in argv
    names = [a for a in argv if a != "--survivors"] or list(MODULES)
    children = int(os.environ.get("MUTATION_CHILDREN", "2"))
    total_killed = total = 0
    for name in names:
        res = run_module(name, children, survivors_only)
        if res:
            total_killed, total = total_killed + res[0], total + res[1]
    if total:
        print(f"mutation score: {total_killed}/{total} killed ({100 * total_killed / total:.1f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
