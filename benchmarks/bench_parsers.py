"""How fast do the parsers read hostile input, next to benign input of the same size?

For every parser, the hostile shapes of issue 14 (PEM BEGIN lines without END, a huge serial,
obsolete HTTP header folding, a ClientHello in 1-byte TLS records, XFCC escapes, aliased YAML,
a base-60 YAML integer) and a benign input of the same size (a big trust bundle, many /certs
entries, keep-alive HTTP, the same ClientHello in 16 KiB records, many XFCC hops, many
policies, a long plain scalar), each parsed ``--repeat`` times (best kept); then the fixed-size
YAML bombs. The inputs are the ones tests/test_hostile_inputs.py checks at small sizes
(tests/hostile_inputs.py). A parser that is linear reads hostile input at a rate of the same
order as benign input; before issue 14 some of these took minutes.

    .venv/bin/python benchmarks/bench_parsers.py [--mb 10] [--repeat 1] [--only NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
import hostile_inputs as hi  # noqa: E402

from pytest_meshconform.istio.api import parse_policies  # noqa: E402


def _best(
    parse: Callable[[bytes | str], object], data: bytes | str, repeat: int
) -> tuple[float, str]:
    """Best wall time of ``repeat`` parses, and what the parse gave (ok or the error type)."""
    best = float("inf")
    outcome = "ok"
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            parse(data)
            outcome = "ok"
        except hi.TYPED_ERRORS as error:
            outcome = type(error).__name__
        best = min(best, time.perf_counter() - start)
    return best, outcome


def _row(parser: str, kind: str, what: str, size: int, seconds: float, outcome: str) -> None:
    rate = f"{size / 1e6 / seconds:9.1f} MB/s" if size >= 100_000 and seconds > 0 else " " * 14
    shown = f"{size / 1e6:8.2f} MB" if size >= 100_000 else f"{size:8d} B "
    print(f"{parser:20} {kind:8} {what:36} {shown} {seconds:8.3f} s {rate}  {outcome}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="input size in MB (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=1, help="parses per input, best kept")
    parser.add_argument("--only", help="only the parsers whose name contains this")
    args = parser.parse_args()
    size = int(args.mb * 1e6)
    print(f"{'parser':20} {'input':8} {'shape':36} {'size':>11} {'time':>10} {'rate':>14}  outcome")
    for case in hi.CASES:
        if args.only and args.only not in case.parser:
            continue
        for kind, make, what in (
            ("hostile", case.hostile, case.name),
            ("benign", case.benign, case.benign_name),
        ):
            data = make(size)
            seconds, outcome = _best(case.parse, data, args.repeat)
            _row(case.parser, kind, what[:36], len(data), seconds, outcome)
    if not args.only or args.only in "parse_policies":
        for what, text in (
            ("alias bomb in metadata.name", hi.alias_bomb_name()),
            ("merge-key bomb", hi.merge_key_bomb()),
        ):
            seconds, outcome = _best(parse_policies, text, args.repeat)
            _row("parse_policies", "hostile", what, len(text), seconds, outcome)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
