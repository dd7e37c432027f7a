"""`dmlt`: train, tune, get, describe, logs, wait and delete, in a cluster or on this machine.

Every error is one line on stderr and a non-zero exit code (see EXIT_CODES in docs/cli.md):
2 bad flags or a refused spec, 3 no cluster / no CRD / no operator / forbidden / not found,
1 the job or study failed, 124 a wait timed out, 130 interrupted (the object keeps running).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import urllib3
import yaml

from dmlt import specs, view
from dmlt import upstream as up
from dmlt.client import Client, resolve_kind
from dmlt.errors import ClusterUnavailable, DmltError, InvalidSpec
from dmlt.jobs import Job, Study
from dmlt.local import RUNS_DIR, LocalJob, LocalPaths, LocalStudy
from dmlt.observe import JobState, StudyState
from dmlt.show import describe_job, describe_study, job_summary, study_summary

PROG = "dmlt"
DURATION_RE = re.compile(r"^(\d+(\.\d+)?)(ms|s|m|h)?$")


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (an InvalidSpec), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise InvalidSpec(message)


def duration(text: str) -> float:
    """`90`, `90s`, `10m`, `1h`, `500ms` → seconds."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 10m or 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(3) or "s"]
    return float(match.group(1)) * scale


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--replicas", type=int, help="Pods (node ranks); default 1")
    g.add_argument(
        "--procs-per-node", type=int, help="ranks per Pod; default 1 (or --world-size in ddp mode)"
    )
    g.add_argument("--image", help="trainer image (default $DMLT_TRAINER_IMAGE or dmlt-trainer:dev)")
    g.add_argument("--cpu", help="CPU request per Pod, e.g. 2 or 500m")
    g.add_argument("--memory", help="memory request and limit per Pod, e.g. 4Gi")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per Pod (nvidia.com/gpu)")
    g.add_argument("--queue", help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)")
    g.add_argument("--name", help="object name (default: from --run-name, else generated)")
    g.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    g.add_argument("--local", action="store_true", help="run here instead, no cluster")
    g.add_argument("--detach", action="store_true", help="print the name and return at once")
    g.add_argument("--dry-run", action="store_true", help="print the object that would be created")
    g.add_argument("-o", "--output", choices=("json", "yaml", "name"), help="print the object in this format")
    g.add_argument("--timeout", type=duration, help="stop following after this long (exit 124)")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, allow_abbrev=False, description="Train and tune on Kubernetes or locally.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="run a TrainingJob (any dmlt-train flag too)",
        epilog="Every other flag is dmlt-train's own: dmlt-train --help lists them.",
    )
    _cluster_flags(train)
    tune = sub.add_parser(
        "tune",
        allow_abbrev=False,
        help="run a TuningStudy (any dmlt-train flag too)",
        epilog="Every other flag is dmlt-train's own (--objective, --direction, --pruner, "
        "--sampler, --hp-trials, --parallel-trials, --storage for --local, ...).",
    )
    _cluster_flags(tune)
    g = tune.add_argument_group("study")
    g.add_argument("--space", help="search space YAML (a list of parameters, or a mapping with parameters)")
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="one parameter: lr=float:1e-4:1e-2:log, batchSize=int:256:1024:step=256, "
        "hiddenDims=choice:64-32,128-64 (repeatable)",
    )
    g.add_argument("--algorithm", choices=up.STUDY_ALGORITHMS, help="default: --sampler")
    g.add_argument("--max-trials", type=int, help="default: --hp-trials")
    g.add_argument("--parallelism", type=int, help="default: --parallel-trials")
    g.add_argument("--max-failed-trials", type=int)
    g.add_argument("--registered-model", help="register the best trial's model under this name")
    g.add_argument("--storage-secret", metavar="NAME[:KEY]", help="Secret with the Optuna storage URL")

    for name, text in (("get", "list or show jobs and studies"), ("describe", "everything about one object")):
        p = sub.add_parser(name, allow_abbrev=False, help=text)
        p.add_argument("target", nargs="*", metavar="[KIND] [NAME]")
        p.add_argument("-n", "--namespace")
        if name == "get":
            p.add_argument("-A", "--all-namespaces", action="store_true")
            p.add_argument("-o", "--output", choices=("json", "yaml", "wide", "name"))
    logs = sub.add_parser("logs", allow_abbrev=False, help="every rank's log, merged with a rank prefix")
    logs.add_argument("target", nargs="+", metavar="[KIND] NAME")
    logs.add_argument("-n", "--namespace")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="follow, across gang restarts, until it ends"
    )
    logs.add_argument("--attempt", type=int, help="an earlier attempt's ranks (while their Pods exist)")
    wait = sub.add_parser("wait", allow_abbrev=False, help="wait for a phase or condition")
    wait.add_argument("target", nargs="+", metavar="[KIND] NAME")
    wait.add_argument("-n", "--namespace")
    wait.add_argument(
        "--for",
        dest="until",
        default=up.SUCCEEDED,
        help="a phase (Succeeded, Failed, Running), finished, or condition=TYPE (default Succeeded)",
    )
    wait.add_argument("--timeout", type=duration, default=None, help="e.g. 30s, 10m (default: no limit)")
    delete = sub.add_parser("delete", allow_abbrev=False, help="delete a job or study (and its Pods)")
    delete.add_argument("target", nargs="+", metavar="[KIND] NAME")
    delete.add_argument("-n", "--namespace")
    return parser


def split_target(words: Sequence[str]) -> tuple[str | None, str | None]:
    """`KIND NAME`, `KIND/NAME`, `NAME`, `KIND` (get) → (kind, name)."""
    if len(words) > 2:
        raise InvalidSpec(f"expected [KIND] NAME, got {' '.join(words)}")
    if len(words) == 2:
        return resolve_kind(words[0]), words[1]
    if not words:
        return None, None
    kind, slash, name = words[0].partition("/")
    if slash:
        return resolve_kind(kind), name
    try:
        return resolve_kind(words[0]), None
    except InvalidSpec:
        return None, words[0]


def _print_object(obj: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        out.write(yaml.safe_dump(obj, sort_keys=False))


# --------------------------------------------------------------------------- train / tune


def _flag_group(options: type[Any], args: argparse.Namespace, **given: Any) -> Any:
    """An options dataclass from the flags whose names are its fields (`given` wins)."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(options) if hasattr(args, f.name)}
    return options(**{**flags, **given})


def _cluster_options(args: argparse.Namespace, client: Client) -> specs.ClusterOptions:
    return _flag_group(specs.ClusterOptions, args, image=args.image or client.image)


def _trainer_config(rest: list[str]) -> up.RunConfig:
    try:
        return up.trainer_parse(rest)
    except up.ConfigError as exc:
        raise InvalidSpec(str(exc)) from None


def _dry_run_namespace(args: argparse.Namespace, client: Client) -> str:
    """--namespace, else the kubeconfig's, else `default`: a dry run needs no cluster."""
    if args.namespace or args.local:
        return args.namespace or "local"
    try:
        return client.namespace
    except ClusterUnavailable:
        return "default"


def launch(
    args: argparse.Namespace,
    client: Client,
    out: TextIO,
    kind: str,
    name: str,
    spec: Any,
    start_local: Callable[[], Any],
) -> Any:
    """Print the object (--dry-run), start it here (--local) or create it in the cluster.
    Returns what to follow, or None when there is nothing to follow."""
    if args.dry_run:
        body = specs.manifest(
            kind, name, _dry_run_namespace(args, client), specs.spec_to_dict(spec), args.queue
        )
        _print_object(body, args.output or "yaml", out)
        return None
    if args.local:
        target = start_local()
        print(f"local {kind} {name}: output under {RUNS_DIR}/", file=sys.stderr)
        return target
    target = client.submit(kind, name, spec, namespace=args.namespace, queue=args.queue)
    ref = f"{kind.lower()}.{up.GROUP}/{name}"
    if args.output == "name":
        print(ref, file=out)
    elif args.output:
        _print_object(target.object(), args.output, out)
    else:
        print(f"{ref} created in namespace {target.namespace}", file=out, flush=True)
    return None if args.detach else target


def follow_to_end(
    target: Any, args: argparse.Namespace, out: TextIO, summary: Callable[..., list[str]]
) -> int:
    """Follow until the end (live on a terminal, plain lines in a pipe), then the summary; the
    exit code follows the object."""
    if view.follow(target.watch(timeout=args.timeout), out, live=out.isatty()) is None:
        return 1
    state = target.state()
    for line in summary(target, state):
        print(line, file=out)
    return 0 if state.phase == up.SUCCEEDED else 1


def cmd_train(args: argparse.Namespace, rest: list[str], client: Client, out: TextIO) -> int:
    cfg = _trainer_config(rest)
    spec = specs.build_job_spec(cfg, _cluster_options(args, client), local=args.local)
    name = specs.job_name(args.name, cfg)
    specs.check_name(up.KIND, name)
    job = launch(
        args,
        client,
        out,
        up.KIND,
        name,
        spec,
        lambda: LocalJob(name, spec, LocalPaths.default(cfg=cfg)).start(),
    )
    return 0 if job is None else follow_to_end(job, args, out, job_summary)


def _space(args: argparse.Namespace) -> dict[str, Any]:
    space = specs.load_space(args.space) if args.space else {}
    if args.param:
        space = {**space, "parameters": [*space.get("parameters", []), *map(specs.parse_param, args.param)]}
    return space


def cmd_tune(args: argparse.Namespace, rest: list[str], client: Client, out: TextIO) -> int:
    cfg = _trainer_config(rest)
    options = _flag_group(specs.StudyOptions, args)
    if cfg.hpo.storage and not args.local:
        raise InvalidSpec(
            "--storage is for --local studies; on a cluster the URL comes from a Secret: "
            "--storage-secret NAME[:KEY]"
        )
    spec = specs.build_study_spec(
        cfg, _cluster_options(args, client), _space(args), options, local=args.local
    )
    name = specs.job_name(args.name, cfg, prefix="tune")
    specs.check_name(up.STUDY_KIND, name)
    storage = cfg.hpo.storage or up.DEFAULT_STORAGE

    def start_local() -> LocalStudy:
        print(f"local study {name} on {storage}", file=sys.stderr)
        return LocalStudy(name, spec, storage, LocalPaths.default(cfg=cfg))

    study = launch(args, client, out, up.STUDY_KIND, name, spec, start_local)
    return 0 if study is None else follow_to_end(study, args, out, study_summary)


# --------------------------------------------------------------------------- get / describe


def cmd_get(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    kind, name = split_target(args.target)
    wide = args.output == "wide"
    if name:
        target = client.find(name, kind, args.namespace)
        objects = [(target.kind, target.object())]
    else:
        kinds = [kind] if kind else [up.KIND, up.STUDY_KIND]
        ns = None if args.all_namespaces else (args.namespace or client.namespace)
        objects = [(k, obj) for k in kinds for obj in client.kube.list(k, ns)]
    if args.output in ("json", "yaml"):
        items = [obj for _, obj in objects]
        _print_object(
            items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items}, args.output, out
        )
        return 0
    if args.output == "name":
        for k, obj in objects:
            print(f"{k.lower()}.{up.GROUP}/{obj['metadata']['name']}", file=out)
        return 0
    wide = wide or args.all_namespaces
    for is_job in (True, False):
        rows = [
            view.job_row(JobState.from_object(o), wide)
            if is_job
            else view.study_row(StudyState.from_objects(o), wide)
            for k, o in objects
            if (k == up.KIND) == is_job
        ]
        if rows:
            print(view.plain_table(view.headers(is_job, wide), rows), file=out)
    if not objects:
        print("No resources found.", file=sys.stderr)
    return 0


def _target(args: argparse.Namespace, client: Client) -> Job | Study:
    kind, name = split_target(args.target)
    if not name:
        raise InvalidSpec(f"{args.command} needs a NAME")
    return client.find(name, kind, args.namespace)


def cmd_describe(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    target = _target(args, client)
    events = client.kube.events(target.namespace, target.kind, target.name)
    lines = describe_job(target, events) if isinstance(target, Job) else describe_study(target, events)
    print("\n".join(lines), file=out)
    return 0


# --------------------------------------------------------------------------- logs / wait / delete


def cmd_logs(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    target = _target(args, client)
    if isinstance(target, Study):
        if args.attempt is not None:
            raise InvalidSpec("--attempt is for TrainingJobs (a trial's job: dmlt logs tj/<study>-t<N>)")
        lines = target.logs(follow=args.follow)
    else:
        lines = target.logs(follow=args.follow, attempt=args.attempt)
    for line in lines:
        print(line, file=out, flush=True)
    return 0


def cmd_wait(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    target = _target(args, client)
    state = target.wait(until=args.until, timeout=args.timeout)
    print(f"{target.kind.lower()}.{up.GROUP}/{target.name} {state.phase}", file=out)
    return 0


def cmd_delete(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    target = _target(args, client)
    target.delete()
    print(f"{target.kind.lower()}.{up.GROUP}/{target.name} deleted", file=out)
    return 0


COMMANDS: dict[str, Callable[..., int]] = {
    "get": cmd_get,
    "describe": cmd_describe,
    "logs": cmd_logs,
    "wait": cmd_wait,
    "delete": cmd_delete,
}


def run(argv: Sequence[str], out: TextIO = sys.stdout, client: Client | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(list(argv))
    client = client or Client(getattr(args, "namespace", None))
    if args.command in ("train", "tune"):
        return (cmd_train if args.command == "train" else cmd_tune)(args, rest, client, out)
    if rest:
        raise InvalidSpec(f"unrecognized arguments: {' '.join(rest)}")
    return COMMANDS[args.command](args, client, out)


def main(argv: Sequence[str] | None = None) -> int:
    # A kubeconfig with insecure-skip-tls-verify asked for it; kubectl does not warn either.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except DmltError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; anything already created keeps running", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
