"""Mutation testing with mutmut 3, one module at a time against the fast tests that cover it.

    make mutation                                  # every module of MODULES
    make mutation MODULES=src/mathllava/augment/cache.py
    python scripts/mutation.py [MODULE ...] [--max-children N] [--min-score PCT]

mutmut 3 runs in the folder it is started in: it copies `source_paths` into ./mutants, rewrites the
files of `only_mutate` there (every mutant behind a switch), puts mutants/src first on sys.path and runs
pytest inside mutants/ (tests/ and `also_copy` are copied beside it). Each module gets its own scratch
copy of the tracked files under build/mutation/<module>/ with a generated [tool.mutmut] block, so the
repository never holds a mutants/ folder or mutmut settings, and each module is judged only by the tests
listed for it. mutmut is one of the project's dev dependencies (pinned in pyproject.toml).

mutmut forks a child per mutant that runs the tests again, module fixtures included: for the modules of
SHARED_MLFLOW, one local MLflow server (under the scratch folder) serves the whole run through
$MATHLLAVA_TEST_MLFLOW_URI, which tests/conftest.py's `mlflow_server` then uses instead of starting its own.

Prints, per module: killed/total, the score, and the diff of every mutant that survived (or that no
listed test reached). Exit 1 when a run fails, or when a score is under --min-score."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> the fast tests that cover it (no cluster, no training, no `slow` mark)
MODULES: dict[str, list[str]] = {
    "src/mathllava/paths.py": ["tests/test_curation_boundaries.py", "tests/test_data.py"],
    "src/mathllava/data/jsonstream.py": ["tests/test_readers.py", "tests/test_curation_boundaries.py",
                                         "tests/test_ingest_formats.py"],
    "src/mathllava/data/sources.py": ["tests/test_curation.py", "tests/test_curation_boundaries.py",
                                      "tests/test_readers.py", "tests/test_ingest_formats.py"],
    "src/mathllava/data/clean.py": ["tests/test_clean.py", "tests/test_curation_boundaries.py",
                                    "tests/test_clean_boundaries.py"],
    "src/mathllava/data/ingest.py": ["tests/test_image_probe.py", "tests/test_curation_boundaries.py"],
    "src/mathllava/train/data.py": ["tests/test_train_data.py", "tests/test_model_boundaries.py"],
    "src/mathllava/train/encoded.py": ["tests/test_train_data.py", "tests/test_model_boundaries.py"],
    "src/mathllava/train/runner.py": ["tests/test_train_output.py", "tests/test_model_boundaries.py"],
    "src/mathllava/evaluation/mathv.py": ["tests/test_mathv_mmmu.py", "tests/test_model_boundaries.py",
                                          "tests/test_eval_rules.py"],
    "src/mathllava/evaluation/mathvista.py": ["tests/test_mathvista.py", "tests/test_eval_rules.py"],
    "src/mathllava/registry/promotion.py": ["tests/test_registry_promotion.py", "tests/test_model_boundaries.py"],
    "src/mathllava/registry/versions.py": ["tests/test_registry_versions.py", "tests/test_registry_promotion.py",
                                           "tests/test_model_boundaries.py"],
    "src/mathllava/augment/cache.py": ["tests/test_augment_cache.py", "tests/test_fault_boundaries.py",
                                       "tests/test_augment_endpoint.py"],
    "src/mathllava/augment/parse.py": ["tests/test_augment_parse.py"],
    # its other tests need the local API server, which each mutant's run would start again
    "src/mathllava/k8s/launcher.py": ["tests/test_k8s_wait.py"],
    "src/mathllava/localcron.py": ["tests/test_schedule_local.py"],
}
# modules of which the issue lists one part: only these functions are mutated and scored ("Class.method" for a
# method); the rest of the module is covered by the cluster, training or pipeline tests, which are not fast
PARTS: dict[str, list[str]] = {
    "src/mathllava/data/ingest.py": ["probe_image"],                                         # the image probe
    "src/mathllava/train/encoded.py": ["file_digest", "_digest_of", "cache_key"],            # the cache key
    "src/mathllava/train/runner.py": ["_identity", "checkpoint_step", "complete_checkpoints", "remove_torn_checkpoints",
                                      "check_output", "write_identity"],                       # the output check
    "src/mathllava/k8s/launcher.py": ["state_of", "failed_pods", "_transient", "wait", "should_delete",
                                      "_delete_config_map", "delete", "run"],                  # wait and cleanup
}
# modules whose tests use tests/conftest.py's `mlflow_server`: one local MLflow server serves the whole
# mutmut run (MATHLLAVA_TEST_MLFLOW_URI), instead of one started for every mutant's tests
SHARED_MLFLOW = {"src/mathllava/registry/promotion.py", "src/mathllava/registry/versions.py"}
SHARED_MLFLOW_ENV = "MATHLLAVA_TEST_MLFLOW_URI"
PYTEST_ARGS = ["-m", "not slow", "-p", "no:cacheprovider"]
ALSO_COPY = ["configs", "run.py", "pipelines", "steps", "stacks", "Makefile", "README.md"]   # what tests reach through ROOT (mutants/ is their ROOT)

KILLED = {"killed", "timeout", "caught by type check"}

# run inside the scratch folder with mutmut importable: every mutant's status, and the diffs of the
# ones that were not killed (what `mutmut results --all true` and `mutmut show NAME` print)
_REPORT = r"""
import json, sys
from pathlib import Path
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
path = Path(sys.argv[1])
data = SourceFileMutationData(path=path)
data.load()
out = {}
for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: (kv[0].rsplit("_", 1)[0], int(kv[0].rsplit("_", 1)[1]))):
    status = status_by_exit_code[code]
    out[name] = {"status": status, "diff": None if status == "killed" else get_diff_for_mutant(name, path=path)}
print(json.dumps(out))
"""


def mutant_patterns(module: str) -> list[str]:
    """mutmut's names for the mutants of the module's listed part (fnmatch patterns); [] for the whole module."""
    dotted = module.removeprefix("src/").removesuffix(".py").replace("/", ".")
    patterns = []
    for function in PARTS.get(module, []):
        cls, _, name = function.rpartition(".")
        mangled = f"x\u01c1{cls}\u01c1{name}" if cls else f"x_{name}"
        patterns.append(f"{dotted}.{mangled}__mutmut_*")
    return patterns


def mutmut_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@contextmanager
def shared_mlflow(module: str, work: Path, env: dict[str, str]):
    """For a module of SHARED_MLFLOW: a local MLflow server (state under `work`/mlflow-server) for the
    whole run, its URI added to `env` in what it yields; stopped afterwards. Other modules: `env` as it is."""
    if module not in SHARED_MLFLOW:
        yield env
        return
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from mathllava.localserver import start, stop
    finally:
        sys.path.pop(0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = work / "mlflow-server"
    try:
        yield {**env, SHARED_MLFLOW_ENV: start(state, "127.0.0.1", port)}
    finally:
        stop(state)


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return [p for p in listed if p and (ROOT / p).is_file()]


def mutmut_block(module: str, tests: list[str]) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return ("\n[tool.mutmut]\n"
            'source_paths = ["src"]\n'                      # the whole package: a lone file would not shadow the editable install
            f"only_mutate = {toml_list([module])}\n"
            f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
            f"pytest_add_cli_args = {toml_list(PYTEST_ARGS)}\n"
            f"also_copy = {toml_list(ALSO_COPY)}\n")


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh scratch copy of the tracked files with the [tool.mutmut] block for `module`."""
    work = ROOT / "build" / "mutation" / module.removeprefix("src/").removesuffix(".py").replace("/", ".")
    shutil.rmtree(work, ignore_errors=True)
    for rel in tracked_files():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml has its own [tool.mutmut]: remove it, scripts/mutation.py writes one per module")
    pyproject.write_text(text + mutmut_block(module, tests))
    shared = ROOT.parent / "shared"   # tests/conftest.py looks for ROOT.parent / "shared"; ROOT is work/mutants
    if shared.is_dir():
        (work / "shared").symlink_to(shared)
    return work


def run_module(module: str, tests: list[str], max_children: int, timeout: float) -> dict:
    for path in [module, *tests]:
        if not (ROOT / path.split("::")[0]).exists():
            raise SystemExit(f"scripts/mutation.py: {path} does not exist (MODULES is out of date)")
    work = prepare(module, tests)
    env = mutmut_env()
    log = work / "mutmut.log"
    start = time.monotonic()
    with log.open("w") as handle, shared_mlflow(module, work, env) as run_env:
        try:
            rc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
                                 *mutant_patterns(module)],
                                cwd=work, env=run_env, stdout=handle, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = time.monotonic() - start

    def failed(why: str) -> dict:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        return {"module": module, "error": why, "tail": tail, "seconds": seconds}

    report = subprocess.run([sys.executable, "-c", _REPORT, module], cwd=work, env=env, capture_output=True,
                            text=True)
    if report.returncode != 0:
        return failed(f"mutmut run exited {rc} after {seconds:.0f} s (log: {log}); reading its results failed: "
                      f"{report.stderr[-1000:]}")
    mutants = json.loads(report.stdout)
    if patterns := mutant_patterns(module):
        mutants = {k: v for k, v in mutants.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    unjudged = sum(1 for v in mutants.values() if v["status"] == "not checked")
    if rc != 0 and (unjudged or not mutants):
        return failed(f"mutmut run exited {rc} after {seconds:.0f} s with {unjudged} mutants not checked (log: {log})")
    # mutmut 3.8 can exit 1 after every mutant has its result (seen once); the results stand, the exit is reported
    warning = f"mutmut exited {rc} after judging every mutant" if rc != 0 else None
    counts: dict[str, int] = {}
    for entry in mutants.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    judged = sum(n for status, n in counts.items() if status not in ("skipped", "not checked"))
    killed = sum(n for status, n in counts.items() if status in KILLED)
    return {"module": module, "part": PARTS.get(module), "tests": tests, "warning": warning, "seconds": seconds,
            "counts": counts, "killed": killed,
            "judged": judged, "score": 100.0 * killed / judged if judged else 0.0,
            "not_killed": {k: v for k, v in mutants.items() if v["status"] not in KILLED}, "work": str(work)}


def print_result(result: dict) -> None:
    print(f"\n== {result['module']}  ({result['seconds']:.0f} s)")
    if "error" in result:
        print(f"   ERROR: {result['error']}")
        for line in result["tail"]:
            print(f"   | {line}")
        return
    counts = ", ".join(f"{status} {n}" for status, n in sorted(result["counts"].items()))
    print(f"   score {result['score']:.1f}%: {result['killed']}/{result['judged']} killed ({counts})")
    if result.get("warning"):
        print(f"   note: {result['warning']}")
    if result.get("part"):
        print(f"   functions: {' '.join(result['part'])}")
    print(f"   tests: {' '.join(result['tests'])}")
    for name, entry in result["not_killed"].items():
        print(f"\n   -- {entry['status']}: {name}")
        for line in (entry["diff"] or "").splitlines():
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                print(f"      {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="paths as in MODULES (default: all)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 when a module scores under this (percent)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per module")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"not in MODULES (add it with its fast tests): {' '.join(unknown)}")
    import importlib.util

    if importlib.util.find_spec("mutmut") is None:
        parser.error("mutmut is not installed: `make mutation` installs the dev dependencies")
    results = [run_module(m, MODULES[m], args.max_children, args.timeout) for m in args.modules or MODULES]
    for result in results:
        print_result(result)
    print("\nmodule".ljust(48) + "score   killed/judged  survived  seconds")
    for r in results:
        if "error" in r:
            print(f"{r['module']:<47} ERROR")
        else:
            print(f"{r['module']:<47} {r['score']:5.1f}%  {r['killed']:>6}/{r['judged']:<6}  "
                  f"{r['counts'].get('survived', 0):>8}  {r['seconds']:>7.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r or r["score"] < args.min_score]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
