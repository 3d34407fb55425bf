"""The official openai SDK through tdx_agent's in-process verified transport (no `connect`),
straight to `serve`: models, chat, a streamed chat and a completion with the first policy,
then one request with the second policy, which must raise VerificationError.

usage: openai_inprocess.py URL ROOT_DER GOOD_POLICY BAD_POLICY; prints one JSON line.
"""

import json
import sys

import openai

import tdx_agent


def main() -> int:
    url, root, good, bad = sys.argv[1:5]
    http = tdx_agent.httpx_client(url, policy=tdx_agent.Policy.from_file(good), insecure_root=root)
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-unused", http_client=http, max_retries=0)
    models = [m.id for m in client.models.list()]
    msgs = [{"role": "user", "content": "Say hello."}]
    chat = client.chat.completions.create(model=models[0], messages=msgs, max_tokens=8)
    chunks = list(client.chat.completions.create(model=models[0], messages=msgs, max_tokens=8, stream=True))
    completion = client.completions.create(model=models[0], prompt="Hello", max_tokens=4)
    out = {
        "models": models,
        "chat_id": chat.id,
        "stream_chunks": len(chunks),
        "completion_id": completion.id,
    }
    refusing = tdx_agent.httpx_client(url, policy=tdx_agent.Policy.from_file(bad), insecure_root=root)
    try:
        openai.OpenAI(base_url=url + "/v1", api_key="sk-unused", http_client=refusing, max_retries=0).models.list()
        out["refused_check"] = None
    except tdx_agent.VerificationError as e:
        out["refused_check"] = e.check
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
