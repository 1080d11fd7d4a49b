"""`mathllava` command line.

    mathllava eval score --benchmark mathvista PREDICTIONS.json --out SCORES.json
    mathllava eval score --benchmark mathv PREDICTIONS.jsonl --data MATH-V-DIR --out SCORES.json
    mathllava eval score --benchmark mmmu PREDICTIONS.json --answers answer_dict_val.json --out SCORES.json
    mathllava eval run --benchmark mathv --data ../shared/data/math-v-testmini --model-dir MODEL --out DIR
    mathllava eval run --benchmark mathv --data ... --endpoint http://127.0.0.1:8000/v1 --model NAME --out DIR
    mathllava serve MODEL_DIR [--port 8000] [--device auto|cpu|cuda] [--max-prompt-tokens N] [--timeout S] ...
    mathllava model init-tiny DIR [--data FILE] [--config FILE]
    mathllava train --base DIR --data FILE --image-root DIR --out DIR [--mode full|lora] [--deepspeed FILE]
                    [--epochs N] [--max-steps N] [--resume] [--config FILE] [--device auto|cpu|cuda]
    mathllava registry show|promote|rollback|history NAME [--config FILE] [--reason TEXT]
    mathllava schedule create --cron "0 3 * * *" --config FILE [--name NAME] | list | delete NAME
    mathllava k8s train --config FILE --kubeconfig FILE --namespace NS [--kind trainjob|pytorchjob]
                        [--render] [--wait] [--timeout S]

`eval run` settings may also come from a YAML file (--config); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RUN_DEFAULTS = {
    "limit": None, "images_dir": None, "batch_size": 8, "max_new_tokens": 64, "temperature": 0.0, "seed": 0,
    "endpoint": None, "model": None, "model_dir": None, "api_key_env": "OPENAI_API_KEY", "concurrency": 8,
    "timeout": 120.0, "retries": 4, "backoff": 0.5, "chunk_size": 32, "llm_extract_endpoint": None,
    "llm_extract_model": None, "mlflow_uri": None, "experiment": "mathllava-evaluation", "run_name": None,
    "device": "auto",
}
RUN_KEYS = set(RUN_DEFAULTS) | {"benchmark", "data", "out"}  # everything `eval run` takes


def _score(args: argparse.Namespace) -> int:
    from .evaluation import benchmarks

    benchmark = benchmarks.get(args.benchmark)
    path = Path(args.predictions)
    if not path.exists():
        print(f"error: no predictions file at {path}", file=sys.stderr)
        return 2
    try:
        predictions = benchmark.read_predictions(path)
        judged = benchmark.rescore(predictions, data=args.data, answers=args.answers,
                                   regen_answer=not args.keep_model_answer)
    except (ValueError, KeyError, FileNotFoundError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(judged.scores, indent=4, ensure_ascii=False), encoding="utf-8")
    if args.updated:
        benchmark.write_predictions(args.updated, judged.predictions)
    print(f"{args.benchmark}: {benchmarks.headline(judged.scores)}  -> {args.out}")
    return 0


def _run_settings(args: argparse.Namespace) -> dict:
    settings = dict(RUN_DEFAULTS)
    if args.config:
        from .settings import read_yaml

        loaded = read_yaml(args.config)
        unknown = set(loaded) - RUN_KEYS
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
        settings.update(loaded)
    settings.update({k: v for k, v in vars(args).items() if v is not None and k in RUN_KEYS})
    for key in ("benchmark", "data", "out"):
        if not settings.get(key):
            raise ValueError(f"--{key} is required (on the command line or in --config)")
    if bool(settings["endpoint"]) == bool(settings["model_dir"]):
        raise ValueError("give exactly one of --model-dir (local transformers) or --endpoint (OpenAI-compatible)")
    return settings


def make_backend(s: dict):
    import os

    from .evaluation.backends import OpenAIChatBackend, TransformersBackend

    if s["endpoint"]:
        if not s["model"]:
            raise ValueError("--model (the served model name) is required with --endpoint")
        return OpenAIChatBackend(s["endpoint"], s["model"], api_key=os.environ.get(s["api_key_env"] or ""),
                                 max_tokens=s["max_new_tokens"], temperature=s["temperature"], seed=s["seed"],
                                 timeout=s["timeout"], max_retries=s["retries"], backoff=s["backoff"],
                                 concurrency=s["concurrency"])
    return TransformersBackend(s["model_dir"], batch_size=s["batch_size"], max_new_tokens=s["max_new_tokens"],
                               temperature=s["temperature"], seed=s["seed"], device=s["device"])


def _run(args: argparse.Namespace) -> int:
    import os

    from .evaluation import benchmarks
    from .evaluation.harness import RunMismatch, log_to_mlflow, run_benchmark

    try:
        s = _run_settings(args)
        benchmark = benchmarks.get(s["benchmark"])
        out = Path(s["out"])
        problems = benchmark.load(s["data"], s["limit"], s["images_dir"], work_dir=out)
        backend = make_backend(s)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    llm_extract = None
    if s["llm_extract_endpoint"]:
        from .evaluation.backends import OpenAIChatBackend
        from .evaluation.llm_extract import ChatAnswerExtractor

        llm_extract = ChatAnswerExtractor(OpenAIChatBackend(
            s["llm_extract_endpoint"], s["llm_extract_model"] or "gpt-4o-mini",
            api_key=os.environ.get(s["api_key_env"] or ""), temperature=0.0, timeout=s["timeout"],
            max_retries=s["retries"], backoff=s["backoff"]))
    print(f"{benchmark.name}: {len(problems)} problems -> {out}")
    try:
        judged = run_benchmark(benchmark, problems, backend, out, chunk_size=s["chunk_size"], llm_extract=llm_extract)
    except RunMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # the endpoint failed for good (after retries)
        print(f"error: {err}\nfinished responses are kept in {out / 'responses.jsonl'}; rerun to continue",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished responses are kept in {out / 'responses.jsonl'}; rerun to continue",
              file=sys.stderr)
        return 130
    gen = judged.extra.get("generation", {})
    rate = gen.get("problems_per_second")
    print(f"{benchmark.name}: accuracy {judged.accuracy:.2f}%  (generated {gen.get('generated')}, reused "
          f"{gen.get('reused')}{f', {rate:.2f} problems/s' if rate else ''})")
    for group, values in judged.groups.items():
        shown = ", ".join(f"{k} {v:.1f}" for k, v in list(values.items())[:12])
        print(f"  by {group}: {shown}")
    if s["mlflow_uri"]:
        import mlflow

        mlflow.set_tracking_uri(s["mlflow_uri"])
        mlflow.set_experiment(s["experiment"])
        with mlflow.start_run(run_name=s["run_name"] or f"{benchmark.name}-{backend.describe()['model']}"):
            mlflow.log_params({f"eval.{k}": str(v)[:250] for k, v in s.items() if k not in ("api_key_env",)})
            log_to_mlflow(benchmark, judged, out)
        print(f"logged to MLflow at {s['mlflow_uri']} (experiment {s['experiment']})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeLimits, serve

    try:
        limits = ServeLimits(max_body_bytes=args.max_body_mb * 1024 * 1024, max_prompt_tokens=args.max_prompt_tokens,
                             max_tokens=args.max_tokens, max_queue=args.max_queue, timeout_s=args.timeout,
                             generation_s=args.generation_limit, drain_s=args.drain)
        serve(args.model_dir, host=args.host, port=args.port, model_name=args.name, device=args.device, limits=limits)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _init_tiny(args: argparse.Namespace) -> int:
    from .train.config import ModelSettings, load_sections
    from .train.data import DataError, read_conversations
    from .train.tiny import init_tiny

    try:
        model = load_sections(args.config)[0] if args.config else ModelSettings()
        texts = [turn["value"] for record in read_conversations(args.data) for turn in record["conversations"]] \
            if args.data else []
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.dir)
    if (out / "config.json").exists() and not args.force:
        print(f"error: {out} already holds a model (use --force to overwrite)", file=sys.stderr)
        return 2
    init_tiny(out, model.tiny, texts)
    print(f"tiny llava-hf checkpoint written to {out}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from . import localcron
    from .state import state_home

    try:
        if args.action == "create":
            from .schedule import schedule_of

            block = schedule_of(args.config)
            cron = args.cron or (block.cron_expression if block else None)
            if not cron:
                raise ValueError(f"give --cron, or a schedule: block with cron_expression in {args.config}")
            name = args.name or (block.name if block and block.name else f"mathllava-{Path(args.config).stem}")
            entry = localcron.create(name, cron, args.config, args.workdir, args.crontab)
            print(f"schedule {entry.name}: {entry.cron}, next run {entry.next_run():%Y-%m-%d %H:%M}; "
                  f"log: {state_home(args.workdir) / 'schedules' / (entry.name + '.log')}")
        elif args.action == "list":
            rows = localcron.entries(args.crontab)
            for entry in rows:
                print(f"{entry.name}\t{entry.cron}\tnext {entry.next_run():%Y-%m-%d %H:%M}\t{entry.config}")
            if not rows:
                print("no schedules")
        elif args.action == "delete":
            localcron.delete(args.name, args.crontab)
            print(f"schedule {args.name} deleted")
        else:
            return localcron.run_scheduled(args.name, args.config, args.workdir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mathllava")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="benchmark evaluation").add_subparsers(dest="action", required=True)

    score = ev.add_parser("score", help="re-score a benchmark-format predictions file")
    score.add_argument("predictions")
    score.add_argument("--benchmark", choices=["mathvista", "mathv", "mmmu"], default="mathvista")
    score.add_argument("--out", required=True, help="scores file, in the benchmark's own layout")
    score.add_argument("--data", help="Math-V: the benchmark's JSONL (or folder) when lines carry no ground truth")
    score.add_argument("--answers", help="MMMU: ground truth in answer_dict_val.json layout")
    score.add_argument("--keep-model-answer", action="store_true",
                       help="Math-V: judge the stored model_answer instead of re-extracting it from the response")
    score.add_argument("--updated", help="also write the predictions with re-computed judgements")
    score.set_defaults(func=_score)

    run = ev.add_parser("run", help="generate answers for a benchmark, score them and write its files")
    run.add_argument("--config", help="YAML with any of the settings below")
    run.add_argument("--benchmark", choices=["mathvista", "mathv", "mmmu"])
    run.add_argument("--data", help="benchmark data: MathVista testmini.json, Math-V folder/JSONL, MMMU parquet folder")
    run.add_argument("--out", help="output folder (reused to resume)")
    run.add_argument("--images-dir", help="MathVista/MMMU: where the images are (or are written)")
    run.add_argument("--limit", type=int)
    run.add_argument("--model-dir", help="local backend: a saved LLaVA model directory")
    run.add_argument("--endpoint", help="HTTP backend: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--model", help="HTTP backend: the served model name")
    run.add_argument("--api-key-env", help="environment variable that holds the API key")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--concurrency", type=int)
    run.add_argument("--timeout", type=float)
    run.add_argument("--retries", type=int)
    run.add_argument("--backoff", type=float)
    run.add_argument("--chunk-size", type=int)
    run.add_argument("--llm-extract-endpoint", help="MathVista: OpenAI-compatible endpoint for answer extraction")
    run.add_argument("--llm-extract-model")
    run.add_argument("--mlflow-uri", help="log metrics, files and charts to this MLflow tracking server")
    run.add_argument("--experiment")
    run.add_argument("--run-name")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="local backend: where the model runs")
    run.set_defaults(func=_run)

    srv = sub.add_parser("serve", help="OpenAI-compatible chat-completions server for a model directory")
    srv.add_argument("model_dir")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--name", help="model name to serve under (default: the directory name)")
    srv.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    from .serve import ServeLimits

    bounds = ServeLimits()
    srv.add_argument("--max-body-mb", type=int, default=bounds.max_body_bytes // (1024 * 1024),
                     help="larger request bodies get 413 (default: %(default)s)")
    srv.add_argument("--max-prompt-tokens", type=int, default=bounds.max_prompt_tokens,
                     help="longer prompts get 400; capped at the model's context (default: %(default)s)")
    srv.add_argument("--max-tokens", type=int, default=bounds.max_tokens,
                     help="largest max_tokens a request may ask for (default: %(default)s)")
    srv.add_argument("--max-queue", type=int, default=bounds.max_queue,
                     help="requests waiting or running; more get 503 (default: %(default)s)")
    srv.add_argument("--timeout", type=float, default=bounds.timeout_s,
                     help="seconds from arrival to reply; later requests get 504 (default: %(default)s)")
    srv.add_argument("--generation-limit", type=float, default=bounds.generation_s,
                     help="seconds one request may hold the model; longer ones are stopped with 504 "
                          "(default: %(default)s)")
    srv.add_argument("--drain", type=float, default=bounds.drain_s,
                     help="on SIGTERM, seconds requests in flight may finish before they are stopped "
                          "(default: %(default)s)")
    srv.set_defaults(func=_serve)

    model = sub.add_parser("model", help="model checkpoints").add_subparsers(dest="action", required=True)
    tiny = model.add_parser("init-tiny", help="write the built-in tiny model as a llava-hf checkpoint")
    tiny.add_argument("dir")
    tiny.add_argument("--data", help="LLaVA conversation JSON/JSONL whose text the tokenizer is trained on")
    tiny.add_argument("--config", help="YAML whose model.tiny section sets the shape")
    tiny.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    tiny.set_defaults(func=_init_tiny)

    from .train.cli import add_arguments

    train = add_arguments(sub.add_parser("train", help="fine-tune a llava-hf base (see python -m mathllava.train)"))
    train.set_defaults(func=_train)

    from .data.cli import register as register_data
    from .experiment.cli import register as register_experiment
    from .k8s.cli import register
    from .registry.cli import register as register_registry

    register(sub)
    register_registry(sub)
    register_data(sub)
    register_experiment(sub)

    sched = sub.add_parser("schedule", help="pipeline runs on a schedule on this machine (cron)") \
        .add_subparsers(dest="action", required=True)
    create = sched.add_parser("create", help="install a cron entry that runs the pipeline under a lock")
    create.add_argument("--cron", help="cron expression (default: the config's schedule.cron_expression)")
    create.add_argument("--config", required=True, help="run config, e.g. configs/local.yaml")
    create.add_argument("--name", help="default: the config's schedule.name, else mathllava-<config name>")
    create.add_argument("--workdir", default=".", help="the project folder (holds the Makefile)")
    listing = sched.add_parser("list", help="the installed schedules and their next runs")
    delete = sched.add_parser("delete", help="remove a schedule")
    delete.add_argument("name")
    runner = sched.add_parser("run", help="what the cron entry runs: one locked pipeline run")
    runner.add_argument("--name", required=True)
    runner.add_argument("--config", required=True)
    runner.add_argument("--workdir", default=".")
    for p in (create, listing, delete, runner):
        p.add_argument("--crontab", help="a crontab file to edit instead of the user's own (crontab command)")
        p.set_defaults(func=_schedule)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
