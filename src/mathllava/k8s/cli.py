"""`mathllava k8s train`: one distributed fine-tuning run as a Kubeflow job.

    mathllava k8s train --config FILE --kubeconfig FILE --namespace NS [--kind trainjob|pytorchjob]
                        [--render] [--wait] [--timeout S]

--render prints the manifests as YAML (with the Trainer API generation it assumed and a GPU-hours
estimate as comments) and submits nothing; it reads no cluster, so with job.trainer_api: auto a TrainJob
is written for the latest API (Trainer v2.2+). Otherwise the API is read from the cluster's TrainJob CRD
(unless job.trainer_api names it), the job is submitted, read back (a job the server pruned is deleted
and refused, naming the dropped fields) and its kind/name printed; with --wait the command follows it and exits
0 when it succeeds, 1 with the job's reason when it fails, 124 when it times out. Exit 2: a bad config
or a refusal by the API server.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="job settings (configs/k8s/train.yaml)")
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig file of the cluster")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kind", choices=["trainjob", "pytorchjob"],
                        help="TrainJob (Kubeflow Trainer v2) or PyTorchJob (Training Operator v1); default: job.kind")
    parser.add_argument("--render", action="store_true", help="print the manifests and submit nothing")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    parser.add_argument("--timeout", type=float, help="seconds --wait waits (default: job.timeout_s)")
    return parser


def train(args: argparse.Namespace) -> int:
    from .config import load_cluster_config
    from .estimate import estimate
    from .launcher import ClusterError, api_client, run, submit

    try:
        config = load_cluster_config(args.config)
        if args.timeout is not None:
            if args.timeout <= 0:
                raise ValueError("--timeout must be > 0")
            # the job's own deadline (PyTorchJob activeDeadlineSeconds) follows the wait's
            config = config.model_copy(update={"job": config.job.model_copy(update={"timeout_s": args.timeout})})
        if args.render:
            rendered = _render(config, args, None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.render:
        guess = estimate(config)
        lines = [rendered.describe_api()]
        lines += guess.lines() if guess else ["estimate: none (set estimate.measured and a token count in the config)"]
        print("".join(f"# {line}\n" for line in lines) + "---\n" + rendered.yaml(), end="")
        return 0
    try:
        api = api_client(args.kubeconfig)
        try:
            rendered = _render(config, args, api)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        kind_name = f"{rendered.job['kind']}/{rendered.name}"
        if rendered.kind == "trainjob":
            print(f"{kind_name}: {rendered.describe_api()}", file=sys.stderr)
        if not args.wait:
            submit(api, rendered)
            print(kind_name)
            return 0
        print(kind_name, flush=True)
        outcome = run(api, rendered, config.job.timeout_s, config.job.cleanup,
                      log=lambda line: print(line, file=sys.stderr))
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # an unreadable kubeconfig, an unreachable server
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError

        if not isinstance(err, (ConfigException, HTTPError, OSError)):
            raise
        print(f"error: cannot reach the cluster of {args.kubeconfig}: {err}", file=sys.stderr)
        return 2
    if outcome.ok:
        print(f"{kind_name} succeeded; the run is in {rendered.output} (model: {rendered.output}/model)")
        return 0
    print(f"error: {kind_name} {outcome.describe()}", file=sys.stderr)
    return 124 if outcome.state == "timeout" else 1


def _render(config, args, api):
    """The manifests for the cluster behind `api` (its Trainer API and runtime names read from it), or,
    with no `api`, as job.trainer_api says (auto: the latest). A ValueError names the config file."""
    from .launcher import render_for_cluster
    from .manifests import render

    try:
        if api is None:
            return render(config, args.namespace, kind=args.kind)
        return render_for_cluster(api, config, args.namespace, kind=args.kind)
    except ValueError as err:
        raise ValueError(f"{args.config}: {err}") from None


def register(sub) -> None:
    """Add `k8s train` to the `mathllava` command."""
    k8s = sub.add_parser("k8s", help="training on Kubernetes (Kubeflow)").add_subparsers(dest="action", required=True)
    add_arguments(k8s.add_parser("train", help="submit a distributed training job", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)).set_defaults(func=train)
