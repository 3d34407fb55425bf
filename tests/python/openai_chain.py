#!/usr/bin/env python3
"""Drives an OpenAI-compatible server with the official openai SDK, as a real client would.

Usage: openai_chain.py BASE_URL        e.g. http://127.0.0.1:9000/v1
       openai_chain.py BASE_URL --stream-until-error
         one long streamed chat completion; prints {"event": "first-chunk"} on its own line
         as soon as the first chunk arrives (so a test can kill the model server then), and
         finally the usual error object (exit 1) or {"ended": "clean", "chunks": N} (exit 0).
The API key comes from $OPENAI_API_KEY ("unused" if unset). Expects a model named "tiny"
(scripts/vllm.sh serves one). Run it with the python that `scripts/vllm.sh python` prints.

Prints one JSON object on stdout. Exit 0: every call succeeded and looked right. Exit 1:
{"error": {"type", "status", "message", "body"}} describing the first failure.
"""

import json
import os
import sys

import openai

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "hello"}]


def chain(client):
    models = [m.id for m in client.models.list()]
    if MODEL not in models:
        raise AssertionError(f"model {MODEL!r} not listed: {models}")

    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    if not chat.choices or chat.choices[0].message is None:
        raise AssertionError(f"chat completion has no choice with a message: {chat}")
    choice = chat.choices[0]

    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
    chunks = sum(1 for _ in stream)
    if chunks <= 1:
        raise AssertionError(f"streamed chat completion gave {chunks} chunk(s), expected more")

    completion = client.completions.create(model=MODEL, prompt="hello", max_tokens=8)
    if not completion.choices:
        raise AssertionError(f"completion has no choice: {completion}")

    return {
        "models": models,
        "chat": {"id": chat.id, "finish_reason": choice.finish_reason,
                 "content": choice.message.content,
                 "completion_tokens": chat.usage.completion_tokens if chat.usage else None},
        "stream_chunks": chunks,
        "completion": {"id": completion.id, "finish_reason": completion.choices[0].finish_reason,
                       "text": completion.choices[0].text},
    }


def stream_until_error(client):
    # ignore_eos: random weights may emit EOS at once; the stream must outlive the kill.
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, stream=True,
        extra_body={"ignore_eos": True})
    chunks = 0
    for _ in stream:
        chunks += 1
        if chunks == 1:
            print(json.dumps({"event": "first-chunk"}), flush=True)
    return {"ended": "clean", "chunks": chunks}


def main():
    if len(sys.argv) == 3 and sys.argv[2] == "--stream-until-error":
        run = stream_until_error
    elif len(sys.argv) == 2:
        run = chain
    else:
        sys.exit(__doc__)
    # No retries and a bounded wait: a test wants the first failure, not a slow success.
    client = openai.OpenAI(base_url=sys.argv[1], api_key=os.environ.get("OPENAI_API_KEY", "unused"),
                           timeout=120, max_retries=0)
    try:
        result = run(client)
    except Exception as e:  # noqa: BLE001  (every failure becomes the JSON error object)
        print(json.dumps({"error": {
            "type": type(e).__name__,
            "status": getattr(e, "status_code", None),
            "message": str(e),
            "body": getattr(e, "body", None),
        }}, default=str))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
