"""Reward server under load: thousands of mixed requests at high concurrency over loopback.

    python benchmarks/reward_load.py [--requests 3000] [--concurrency 64] [--num-procs 4]
    python benchmarks/reward_load.py --adversarial --concurrency 200 [--requests 2000]

Starts `areal-sys reward-serve` as a subprocess on a free port and fires `--requests` POST /score
requests (one item each) from `--concurrency` concurrent clients. The mix (by request):
synthetic 40% (half correct), math 30% (GSM8K `####`, `\\boxed{}`, fractions, plain numbers),
format 10%, repeats of earlier items 10% (cache hits), code 8% (small programs against two tests,
run in the sandbox), hostile 2% (megabyte and regex-hostile math answers, programs that loop or
flood stdout).

A request fails when it gets no well-formed 200 answer, or when a benign item comes back
`ok=false` (e.g. a timeout caused by load). Hostile items may legitimately end in `ok=false`.
Writes benchmarks/results/reward_load.json (`requests`, `throughput_rps`, `p50_s`, `p99_s`,
`failures`, per-kind latencies, the server's counters) and reward_load.png.

`--adversarial` (results: reward_load_adversarial.json/.png): the server requires a token, and a
quarter of the requests are hostile clients next to the well-formed ones: slow items (programs
sleeping most of their wall clock), malformed items, bodies over the size limit, 100k-deep JSON,
unknown tasks that name code (`os:popen`), bad tokens, and clients that hang up mid-request.
`failures` then counts only well-formed requests (any that did not get their graded answer);
`p99_s` is over well-formed requests; `adversarial_mishandled` counts hostile requests that got
anything but their expected refusal (a 5xx, a dropped connection, a wrong status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from areal_sys.ports import free_port  # noqa: E402
from benchmarks.common import figure_path, write_results  # noqa: E402

CODE_REF = json.dumps({"tests": [{"input": "3 4\n", "output": "7"},
                                 {"input": "10 -2\n", "output": "8"}]})
ADDER = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


TOKEN = "benchmark-token"
# kind -> HTTP statuses that are the right answer (None: the client hangs up, no answer)
EXPECTED = {"slow": (200,), "malformed": (200,), "unknown_task": (400,), "huge_body": (413,),
            "deep_json": (400,), "bad_token": (401,), "hangup": (None,)}
WELL_FORMED = {"synthetic", "math", "format", "repeat", "code", "slow"}


def make_adversarial(items: list[tuple[str, dict[str, Any]]], seed: int
                     ) -> list[tuple[str, Any]]:
    """Replace about a quarter of `items` with hostile requests (see the module doc)."""
    rng = random.Random(seed + 1)
    out: list[tuple[str, Any]] = []
    for i, (kind, item) in enumerate(items):
        u = rng.random()
        if u < 0.05:
            prog = f"# {i}\nimport time\ntime.sleep(0.6)\nprint(7)"
            out.append(("slow", {"task": "code", "response": prog, "reference": CODE_REF}))
        elif u < 0.10:
            bad = rng.choice([{"task": "math"}, {"task": "math", "response": 1, "reference": "1"},
                              {**item, "timeout_s": -1}, {**item, "reference": [1, 2]}])
            out.append(("malformed", bad))
        elif u < 0.13:
            out.append(("unknown_task", {"task": rng.choice(["os:popen", "builtins:open",
                                                             "/tmp/x.py:f", "nope"]),
                                         "response": "id", "reference": "r"}))
        elif u < 0.14:
            out.append(("huge_body", b"[" + b" " * (5 << 20) + b"]"))
        elif u < 0.17:
            out.append(("deep_json", b"[" * 100_000 + b"]" * 100_000))
        elif u < 0.20:
            out.append(("bad_token", item))
        elif u < 0.25:
            out.append(("hangup", {"task": "code", "response": f"# {i}\nimport time\n"
                                   "time.sleep(0.5)\nprint(7)", "reference": CODE_REF}))
        else:
            out.append((kind, item))
    return out


def make_items(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    from areal_sys.data.synthetic import make_problems

    rng = random.Random(seed)
    problems = make_problems(n, seed=seed, split="train")
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        u = rng.random()
        if u < 0.4:
            p = problems[i]
            ans = p["answer"] if rng.random() < 0.5 else str(int(p["answer"]) + 1)
            resp = p["solution"].rsplit("####", 1)[0] + f"#### {ans}"
            out.append(("synthetic", {"task": "synthetic", "response": resp,
                                      "reference": p["answer"]}))
        elif u < 0.7:
            a, b = rng.randint(1, 999), rng.randint(1, 99)
            resp = rng.choice([f"so the total is\n#### {a * b}", f"\\boxed{{{a * b}}}",
                               f"{a} times {b} gives {a * b}", f"$\\frac{{{a * b * 2}}}{{2}}$",
                               f"#### {a * b + 1}"])
            out.append(("math", {"task": "math", "response": resp, "reference": str(a * b)}))
        elif u < 0.8:
            body = "x" * rng.randint(1, 200)
            resp = f"<think>{body}</think><answer>{i}</answer>" + ("!" if i % 3 == 0 else "")
            out.append(("format", {"task": "format", "response": resp,
                                   "reference": r"<think>.*</think>\s*<answer>\d+</answer>"}))
        elif u < 0.9 and out:
            out.append(("repeat", rng.choice(out)[1]))
        elif u < 0.98:
            # distinct programs (a comment makes each unique, so none is a cache hit)
            prog = ADDER if rng.random() < 0.7 else "print(7)"
            out.append(("code", {"task": "code", "response": f"# {i}\n{prog}",
                                 "reference": CODE_REF}))
        else:
            hostile = rng.choice([
                ("math", "\\boxed{" * 300_000 + str(i)),
                ("math", "(" * 500_000 + f"#### {i}"),
                ("math", "1+" * 400_000),
                ("code", f"# {i}\nwhile True:\n    pass"),
                ("code", f"# {i}\nimport sys\nwhile True:\n    sys.stdout.write('z' * 65536)"),
            ])
            ref = CODE_REF if hostile[0] == "code" else "5"
            out.append(("hostile", {"task": hostile[0], "response": hostile[1],
                                    "reference": ref}))
    return out


async def fire(url: str, items: list[tuple[str, Any]], concurrency: int,
               token: str | None = None) -> list[dict[str, Any]]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    hangup_s = (0.3, 0.8, 1.5, 2.5)  # while queued for a slot, or while being graded
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one(kind: str, item: Any) -> dict[str, Any]:
            headers = {"Authorization": "Bearer wrong"} if kind == "bad_token" else auth
            raw = item if isinstance(item, bytes) else json.dumps(item).encode()
            async with sem:
                t0 = time.perf_counter()
                status, body, err = None, None, ""
                try:
                    post = client.post("/score", content=raw, headers={
                        **headers, "Content-Type": "application/json"})
                    if kind == "hangup":  # the client gives up mid-request
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(post, hangup_s[len(raw) % len(hangup_s)])
                    else:
                        resp = await post
                        status = resp.status_code
                        body = resp.json() if status == 200 else None
                except Exception as e:  # noqa: BLE001 - counted as a failure
                    err = f"{type(e).__name__}: {e}"
                latency = time.perf_counter() - t0
            if kind in EXPECTED:
                ok = not err and status in EXPECTED[kind]
                if kind == "slow":
                    ok = ok and isinstance(body, dict) and bool(body.get("ok"))
                reason = err or ("" if ok else f"HTTP {status}")
            else:
                well_formed = isinstance(body, dict) and {"reward", "ok"} <= set(body)
                ok = well_formed and (body["ok"] or kind == "hostile")
                reason = err or ("" if ok else str(body.get("reason") if body
                                                   else f"HTTP {status}"))
            return {"kind": kind, "latency_s": latency, "failed": not ok, "reason": reason}

        return await asyncio.gather(*[one(k, it) for k, it in items])


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--num-procs", type=int, default=4)
    ap.add_argument("--max-concurrency", type=int, default=8)
    ap.add_argument("--adversarial", action="store_true", help="hostile clients in the mix")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = TOKEN if args.adversarial else None
    env = {**os.environ, "AREAL_SYS_REWARD_TOKEN": token or ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "areal_sys.cli", "reward-serve", "--port", str(port),
         "--num-procs", str(args.num_procs), "--max-concurrency", str(args.max_concurrency),
         "--timeout-s", "10", "--code-wall-s", "1", "--max-body-mb", "4"], cwd=ROOT, env=env)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/health", headers=auth, timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        items: list[tuple[str, Any]] = list(make_items(args.requests, args.seed))
        if args.adversarial:
            items = make_adversarial(items, args.seed)
        t0 = time.perf_counter()
        rows = asyncio.run(fire(url, items, args.concurrency, token))
        wall = time.perf_counter() - t0
        health = httpx.get(f"{url}/health", headers=auth, timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=30)

    name = "reward_load_adversarial" if args.adversarial else "reward_load"
    good = [r for r in rows if r["kind"] in WELL_FORMED or r["kind"] == "hostile"]
    if args.adversarial:
        good = [r for r in rows if r["kind"] in WELL_FORMED]
    lat = [r["latency_s"] for r in good]
    failures = [r for r in good if r["failed"]]
    kinds = sorted({r["kind"] for r in rows})
    per_kind = {k: {"n": len(v), "p50_s": quantile(v, 0.5), "p99_s": quantile(v, 0.99),
                    "failed": sum(r["failed"] for r in rows if r["kind"] == k)}
                for k in kinds for v in [[r["latency_s"] for r in rows if r["kind"] == k]]}
    figures = {
        "requests": len(rows), "throughput_rps": len(rows) / wall, "p50_s": quantile(lat, 0.5),
        "p99_s": quantile(lat, 0.99), "failures": len(failures), "wall_s": wall,
        "mean_s": statistics.fmean(lat), "per_kind": per_kind,
        "failure_reasons": sorted({f["reason"] for f in failures})[:10],
        "server": {k: v for k, v in health.items() if k != "status"},
    }
    if args.adversarial:
        hostile = [r for r in rows if r["kind"] not in WELL_FORMED]
        figures.update(well_formed_requests=len(good), adversarial_requests=len(hostile),
                       adversarial_mishandled=sum(r["failed"] for r in hostile),
                       adversarial_reasons=sorted({r["reason"] for r in hostile
                                                   if r["failed"]})[:10])
    settings = vars(args)
    path = write_results(name, figures, settings)
    _plot(rows, per_kind, figures, figure_path(name))
    print(f"{len(rows)} requests in {wall:.1f} s: {figures['throughput_rps']:.0f} req/s, "
          f"p50 {figures['p50_s'] * 1000:.0f} ms, p99 {figures['p99_s'] * 1000:.0f} ms, "
          f"{len(failures)} failures of {len(good)} well-formed"
          + (f", {figures['adversarial_mishandled']} of {figures['adversarial_requests']} "
             "hostile requests mishandled" if args.adversarial else "")
          + f", sandbox {health['sandbox']} -> {path}")


def _plot(rows: list[dict[str, Any]], per_kind: dict[str, Any], figures: dict[str, Any],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind in per_kind:
        a.hist([r["latency_s"] for r in rows if r["kind"] == kind], bins=50, alpha=0.6,
               label=kind, log=True)
    a.set_xlabel("request latency (s)")
    a.set_ylabel("requests")
    hostile = figures.get("adversarial_requests")
    a.set_title(f"{figures['requests']} requests"
                + (f" ({hostile} hostile)" if hostile else "")
                + f", {figures['throughput_rps']:.0f} req/s, {figures['failures']} failures")
    a.legend()
    names = list(per_kind)
    x = range(len(names))
    b.bar([i - 0.2 for i in x], [per_kind[k]["p50_s"] for k in names], 0.4, label="p50")
    b.bar([i + 0.2 for i in x], [per_kind[k]["p99_s"] for k in names], 0.4, label="p99")
    b.set_xticks(list(x), names, rotation=45, ha="right")
    b.set_ylabel("latency (s)")
    b.set_yscale("log")
    b.set_title("latency by kind")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
