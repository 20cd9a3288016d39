"""The `lmserve` command line: `lmserve serve`, `lmserve generate`, `lmserve router`, `lmserve cluster` and
`lmserve bench serve`."""

from __future__ import annotations

import argparse
import sys

from lmserve.bench.cli import add_bench_parser
from lmserve.cluster.cli import add_cluster_parser
from lmserve.config import CacheConfig, EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig
from lmserve.entrypoints.cli_args import add_dataclass_arguments, pick
from lmserve.errors import LmserveError
from lmserve.router.cli import add_router_parser
from lmserve.sampling_params import SamplingParams
from lmserve.server.config import ServerConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmserve", description="Serve and run large language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model over OpenAI- and TGI-compatible HTTP APIs")
    serve.add_argument("model", nargs="?", help="a local Hugging Face model directory (default: the embedded model)")
    _add_engine_arguments(serve)
    serve.set_defaults(server_options=add_dataclass_arguments(serve, ServerConfig), handler=run_serve)

    generate = commands.add_parser("generate", help="generate completions for prompts, offline")
    generate.add_argument("--model", help="a local Hugging Face model directory (default: the embedded model)")
    generate.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    _add_engine_arguments(generate)
    generate.set_defaults(sampling_options=add_dataclass_arguments(generate, SamplingParams), handler=run_generate)

    add_router_parser(commands)
    add_cluster_parser(commands)
    add_bench_parser(commands)
    return parser


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    options = []
    for config_class in (ModelConfig, CacheConfig, SchedulerConfig, RunnerConfig):
        options += add_dataclass_arguments(parser, config_class, skip={"model"})
    parser.set_defaults(engine_options=options)


def _engine_options(args: argparse.Namespace) -> tuple[str, dict]:
    """The model directory (the embedded model when none is given) and the engine options set."""
    from lmserve.models.default import DEFAULT_MODEL_DIR

    return args.model or DEFAULT_MODEL_DIR, {"device": args.device, **pick(args, args.engine_options)}


def run_serve(args: argparse.Namespace) -> None:
    from lmserve.server.serve import run_server

    model, options = _engine_options(args)
    run_server(EngineConfig.from_options(model, **options), ServerConfig(**pick(args, args.server_options)))


def run_generate(args: argparse.Namespace) -> None:
    from lmserve.entrypoints.llm import LLM

    model, options = _engine_options(args)
    llm = LLM(model, **options)
    params = SamplingParams(**pick(args, args.sampling_options))
    for output in llm.generate(args.prompt, params, use_tqdm=False):
        for completion in output.outputs:
            print(completion.text if llm.get_tokenizer() is not None else completion.token_ids)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except LmserveError as error:
        print(f"lmserve: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
