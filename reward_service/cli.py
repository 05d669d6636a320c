"""`areal-sys reward-serve`: the HTTP reward service from the command line.

Exit code 2 and one line on stderr for any bad flag.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    rs = argparse.ArgumentParser(prog="areal-sys reward-serve",
                                 description="HTTP reward service (POST /score, GET /health)")
    rs.add_argument("--host", default="127.0.0.1")
    rs.add_argument("--port", type=int, default=8700)
    rs.add_argument("--timeout-s", type=float, default=5.0, help="per-item limit (default)")
    rs.add_argument("--max-concurrency", type=int, default=8, help="items graded at once")
    rs.add_argument("--num-procs", type=int, default=2, help="grader subprocesses")
    rs.add_argument("--cache-size", type=int, default=65536, help="LRU results kept (0: off)")
    rs.add_argument("--correct-reward", type=float, default=1.0)
    rs.add_argument("--wrong-reward", type=float, default=0.0)
    rs.add_argument("--math-extract", default="auto", help="auto | e.g. boxed,gsm8k,last_number")
    rs.add_argument("--code-reward", default="fraction", choices=["fraction", "all_or_nothing"])
    rs.add_argument("--code-wall-s", type=float, default=2.0, help="sandbox limit per test case")
    return rs


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        from reward_service.graders import GraderSettings

        settings = GraderSettings(math_extract=args.math_extract, code_reward=args.code_reward,
                                  code_wall_s=args.code_wall_s)
    except ValueError as e:
        print(f"areal-sys: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from reward_service.http import serve  # fastapi/uvicorn only for this command

    serve(args.host, args.port, timeout_s=args.timeout_s, max_concurrency=args.max_concurrency,
          num_procs=args.num_procs, cache_size=args.cache_size,
          correct_reward=args.correct_reward, wrong_reward=args.wrong_reward,
          grader_settings=vars(settings))
    return 0
