"""Serving throughput under concurrency: the aggregate generated tokens per second of a running
`fineflow serve` with one client, then with N clients at once.

    .venv/bin/fineflow serve --model smollm2-135m-instruct --set serve.traffic.enabled=false &
    .venv/bin/python benchmarks/serving_concurrency.py [--base-url http://127.0.0.1:8000/v1] [--clients 8]
                                                       [--requests-per-client 2] [--max-tokens 32]

Each client sends golden-set questions one after another (plain completions, greedy, the same max_tokens);
the clients start together. Aggregate throughput is the completion tokens of every answer divided by the
wall time from the first request to the last answer. What lifts it with more clients: requests that wait
together are generated in one `generate` call (`serve.max_batch_size`), one forward pass per step serving
every one of them. It prints both phases and `ratio <N> clients / 1 client: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import httpx

GOLDEN = Path(__file__).resolve().parent.parent / "sample_data/golden/golden.jsonl"


def questions() -> list[str]:
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]
    return [row["question"] for row in rows]


def client_run(base_url: str, headers: dict, model: str, asked: list[str], max_tokens: int) -> int:
    """One client's requests, one after another; its completion tokens."""
    tokens = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
        for question in asked:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            response = http.post("/chat/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]
    return tokens


def phase(base_url: str, headers: dict, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` clients at once, each sending `per_client` questions; tokens, seconds, tokens/s."""
    pool = questions()
    counts = [0] * clients

    def run(index: int) -> None:
        asked = [pool[(index * per_client + i) % len(pool)] for i in range(per_client)]
        counts[index] = client_run(base_url, headers, model, asked, max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    tokens = sum(counts)
    return {"clients": clients, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--api-key-env", help="environment variable holding the server's API key, if any")
    args = parser.parse_args()
    key = os.environ[args.api_key_env] if args.api_key_env else None
    headers = {"authorization": f"Bearer {key}"} if key else {}
    model = httpx.get(f"{args.base_url}/models", headers=headers, timeout=30).json()["data"][0]["id"]
    # a warm-up request: the first one pays for lazy initialisation
    client_run(args.base_url, headers, model, questions()[:1], args.max_tokens)
    one = phase(args.base_url, headers, model, 1, args.requests_per_client, args.max_tokens)
    many = phase(args.base_url, headers, model, args.clients, args.requests_per_client, args.max_tokens)
    for result in (one, many):
        print(
            f"{result['clients']} client(s): {result['tokens']} tokens in {result['seconds']:.2f} s = "
            f"{result['tokens_per_second']:.1f} tokens/s"
        )
    print(
        f"ratio {args.clients} clients / 1 client: {many['tokens_per_second'] / one['tokens_per_second']:.2f}"
    )


if __name__ == "__main__":
    main()
