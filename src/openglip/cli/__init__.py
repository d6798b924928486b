"""The ``openglip`` command line. Each sub-command lives in its own module with a ``register(subparsers)``
function; a command parses its arguments and calls library functions.

Errors for people: an :class:`~openglip.errors.OpenGLIPError` (bad input) prints one line and exits with
code 2; any other exception is a bug: one line saying so, exit code 1, and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EXIT_BAD_INPUT, EXIT_BUG, OpenGLIPError

# sub-command modules, in the order ``openglip --help`` lists them
COMMANDS = (
    "detect",
    "train",
    "tune",
    "evaluate",
    "vqa",
    "caption",
    "label",
    "convert",
    "data",
    "export",
    "benchmark",
    "serve",
    "regionclip",
)
# commands whose trailing key=value words are config overrides
OVERRIDE_COMMANDS = ("train", "tune", "regionclip", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="openglip", description="Open-vocabulary grounded object detection."
    )
    parser.add_argument("--version", action="version", version=f"openglip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; argparse exits (code 2, with the usage) when it does not parse."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after the options (argparse stops collecting positionals there)
    if (
        extra
        and getattr(args, "command", None) in OVERRIDE_COMMANDS
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*getattr(args, "overrides", []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("openglip: interrupted", file=sys.stderr)
        return 130
    except OpenGLIPError as err:
        if args.debug:
            raise
        print(f"openglip: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if args.debug:
            raise
        print(
            f"openglip: internal error (this is a bug, please report it): {type(err).__name__}: {_one_line(err)}; "
            "rerun with openglip --debug ... for the traceback",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
