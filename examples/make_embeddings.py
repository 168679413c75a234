"""Regenerate examples/embeddings.jsonl: 240 support-ticket texts to embed (deterministic)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

PRODUCTS = ["the mobile app", "the web dashboard", "my invoice", "the API", "two-factor login", "the export to CSV",
            "the Android widget", "order #4471", "the monthly plan", "the password reset email"]
PROBLEMS = [
    "keeps crashing right after I open it",
    "shows a blank page since yesterday's update",
    "charged me twice this month, please refund one payment",
    "returns a 500 error for every request with a long prompt",
    "never sends the code to my phone",
    "cuts off every row after the first thousand",
    "is stuck on 'syncing' and the battery drains fast",
    "arrived damaged and the box was open",
    "should be cheaper now that I only use it on weekends",
    "went to my spam folder and the link had expired",
    "est très lent depuis la mise à jour",
    "funciona bien, ¡gracias por la ayuda rápida!",
]
TONES = ["", " This is urgent.", " Thanks in advance!", " I have been waiting for three days."]


def main() -> None:
    lines = []
    for n, (product, problem, tone) in enumerate(itertools.islice(
            itertools.product(PRODUCTS, PROBLEMS, TONES), 0, None, 2)):
        text = f"Hello, {product} {problem}.{tone}".replace("..", ".")
        lines.append({"custom_id": f"ticket-{n:04d}", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "all-MiniLM-L6-v2", "input": text}})
    out = Path(__file__).with_name("embeddings.jsonl")
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(lines)} lines to {out}")


if __name__ == "__main__":
    main()
