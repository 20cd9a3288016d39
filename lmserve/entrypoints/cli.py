"""The `lmserve` command line."""

from __future__ import annotations

import argparse
import sys

from lmserve.config import CacheConfig, ModelConfig, SchedulerConfig
from lmserve.entrypoints.cli_args import add_dataclass_arguments, pick
from lmserve.errors import LmserveError
from lmserve.sampling_params import SamplingParams


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmserve", description="Serve and run large language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate completions for prompts, offline")
    generate.add_argument("--model", required=True, help="a local Hugging Face model directory")
    generate.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    generate.add_argument("--device", default="auto")
    engine_options = []
    for config_class in (ModelConfig, CacheConfig, SchedulerConfig):
        engine_options += add_dataclass_arguments(generate, config_class, skip={"model"})
    sampling_options = add_dataclass_arguments(generate, SamplingParams)
    generate.set_defaults(engine_options=engine_options, sampling_options=sampling_options)
    return parser


def run_generate(args: argparse.Namespace) -> None:
    from lmserve.entrypoints.llm import LLM

    llm = LLM(args.model, device=args.device, **pick(args, args.engine_options))
    params = SamplingParams(**pick(args, args.sampling_options))
    for output in llm.generate(args.prompt, params, use_tqdm=False):
        for completion in output.outputs:
            print(completion.text if llm.get_tokenizer() is not None else completion.token_ids)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            run_generate(args)
    except LmserveError as error:
        print(f"lmserve: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
