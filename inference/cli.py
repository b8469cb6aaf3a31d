"""`moorage model ...` and `moorage node ...`. torch/transformers load lazily, inside the
commands, so `moorage --help` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = commands.add_parser("model", help="build and inspect MoE model checkpoints")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")

    make = model_commands.add_parser("make-tiny-moe", help="train a tiny Qwen3-MoE offline (CPU, ~1 min)")
    make.add_argument("dir", type=Path)
    make.add_argument("--experts", type=int, default=16)
    make.add_argument("--top-k", type=int, default=4)
    make.add_argument("--layers", type=int, default=2)
    make.add_argument("--hidden", type=int, default=64)
    make.add_argument("--steps", type=int, default=120)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(run=run_make_tiny_moe)

    inspect = model_commands.add_parser("inspect", help="experts, top-k, total vs active parameters")
    inspect.add_argument("dir", type=Path)
    inspect.add_argument("--load", nargs="+", metavar="TEXT", help="also route TEXT and report expert load")
    inspect.set_defaults(run=run_inspect)

    node = commands.add_parser("node", help="run an inference node")
    node_commands = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")
    run = node_commands.add_parser("run", help="serve a model with a supervised engine until SIGTERM")
    run.add_argument("--engine", choices=["vllm", "transformers"], required=True)
    run.add_argument("--model", type=Path, required=True, help="model directory")
    run.add_argument("--host", default="127.0.0.1", help="loopback or private address")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--served-model-name", help="vLLM only: the model name clients send")
    run.add_argument("--max-model-len", type=int, default=4096)
    run.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    run.add_argument("--allow-public-bind", action="store_true", help="permit 0.0.0.0/public (unauthenticated engine!)")
    run.add_argument("--control-url", help="control plane URL: register and heartbeat there (else: log only)")
    run.add_argument("--node-token", help="node token from POST /v1/nodes (default: $MOORAGE_NODE_TOKEN)")
    run.add_argument("--public-model-name", help="model name tenants use (default: served name or directory name)")
    run.add_argument("--heartbeat-interval", type=float, default=10.0, help="seconds between heartbeats")
    run.add_argument("--expert-probe", nargs="+", metavar="TEXT", help="route TEXT at start; report expert load")
    run.set_defaults(run=run_node)


def run_make_tiny_moe(args: argparse.Namespace) -> int:
    from inference.model.make_tiny_moe import make_tiny_moe

    manifest = make_tiny_moe(
        args.dir,
        experts=args.experts,
        top_k=args.top_k,
        layers=args.layers,
        hidden=args.hidden,
        train_steps=args.steps,
        seed=args.seed,
    )
    print(json.dumps({"dir": str(args.dir), **manifest}))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from inference.model.inspect import expert_load, inspect_model

    report = inspect_model(args.dir)
    if args.load:
        report["expert_load"] = expert_load(args.dir, args.load)
    print(json.dumps(report))
    return 0


def run_node(args: argparse.Namespace) -> int:
    from control.cli.admin import CommandError
    from control.logging import configure_logging
    from inference.engine.status import EngineState
    from inference.node import NodeOptions, engine_command
    from inference.node import run_node as run

    try:
        options = NodeOptions(
            engine=args.engine,
            model_dir=args.model,
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            allow_public_bind=args.allow_public_bind,
            control_url=args.control_url,
            # The environment keeps the token out of `ps`; the flag is there for convenience.
            node_token=args.node_token or os.environ.get("MOORAGE_NODE_TOKEN"),
            public_model_name=args.public_model_name,
            heartbeat_interval_s=args.heartbeat_interval,
            expert_probe=tuple(args.expert_probe or ()),
        )
        engine_command(options)  # refuse bad options before anything starts
        if options.control_url:
            from inference.heartbeat_http import node_id_of

            if not options.node_token:
                raise ValueError("--control-url needs a node token: --node-token or MOORAGE_NODE_TOKEN")
            node_id_of(options.node_token)  # a malformed token fails here, not on the first heartbeat
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc), code="invalid_node_options", exit_code=2) from exc
    configure_logging("info", "json")  # logs on stderr; the final status on stdout
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    status = run(options)
    print(json.dumps(status.to_dict(), default=str))
    return 1 if status.state is EngineState.FAILED else 0
