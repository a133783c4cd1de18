"""OpenAI conformance, side by side: the same chat-completions cases against our serving and against plain
vLLM's OpenAI server on the same model, in one run, one server at a time.

What it shows. Each case sends one or a few requests (raw HTTP, so status codes and bodies are seen as they
are) and reduces what came back to a short observation: the status and the ``param`` of an error, or the
features of an answer that OpenAI documents (log-probs present and finite, n choices, a stop string absent,
JSON that parses and validates, usage summed…). Greedy cases also show the start of the text, so the two
engines can be seen to agree. A row is marked where the two servers differ, with the reason when it is
known: a documented extension of ours, or a case where vLLM departs from OpenAI's documentation (it accepts
and ignores most fields it does not implement, answers FastAPI-style errors in places, has no per-choice
ids…). The ``openai`` column says what OpenAI's API reference implies for that case.

Run from the repository root (the broker named by ``RLHF_KAFKA_BOOTSTRAP_SERVERS``, default 127.0.0.1:9092,
must be up; ours logs its events under a fresh ``bench-conformance-<time>.`` topic prefix)::

    .state/venv/bin/python -m bench.conformance.run
    .state/venv/bin/python -m bench.conformance.run --servers ours --cases logprobs n2

Output: the table on stdout and ``<out>/conformance-<timestamp>.json`` (every case's observation and the
raw status and error bodies of both servers); server logs in ``<out>/logs/``.
"""

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # also runnable as `python bench/conformance/run.py`
    sys.path.insert(0, str(ROOT))

from bench.results import RESULTS, utc_stamp, write_json  # noqa: E402
from bench.serving.run import MODEL_NAME, make_service  # noqa: E402
from proto.settings import KafkaSettings, ServiceSettings  # noqa: E402
from proto.topics import ensure_topics  # noqa: E402

ASK = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
CITY = [{"role": "user", "content": "Give the name and population of the capital of France."}]
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
               "required": ["city", "population"], "additionalProperties": False}
WORD = "日本語😀"


class Server:
    """A running server's chat endpoint: ``post`` returns (status, JSON body or list of SSE payloads)."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.url, self.http = url, httpx.Client(timeout=300, headers=headers)

    def post(self, body=None, *, content: bytes | None = None, headers: dict | None = None):
        url = self.url + "/v1/chat/completions"
        if content is not None:
            r = self.http.post(url, content=content, headers=headers or {"content-type": "application/json"})
            return r.status_code, _json(r.text)
        body = {"model": MODEL_NAME, **body}
        if not body.get("stream"):
            r = self.http.post(url, json=body)
            return r.status_code, _json(r.text)
        with self.http.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return r.status_code, _json(r.read().decode())
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        return 200, [json.loads(e) if e != "[DONE]" else "[DONE]" for e in events]


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text[:200]}


def error_of(status: int, body) -> str:
    """``"400 param=tools"`` for an error; the FastAPI ``detail`` style is shown as such."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{status} param={body['error'].get('param')}"
    if isinstance(body, dict) and "detail" in body:
        return f"{status} (FastAPI detail, no OpenAI envelope)"
    return f"{status} {str(body)[:60]}"


def text(body: dict, i: int = 0) -> str:
    return body["choices"][i]["message"]["content"] or ""


def streamed(events: list, index: int = 0) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for e in events if isinstance(e, dict)
                   for c in e.get("choices", []) if c.get("index") == index)


def ok_or_error(status: int, body, describe: Callable[[dict | list], str]) -> str:
    return describe(body) if status == 200 else error_of(status, body)


# --- cases: each returns a one-line observation -------------------------------------------------------------


def case_greedy(s: Server) -> str:
    status, body = s.post({"messages": ASK, "temperature": 0, "max_tokens": 12})
    return ok_or_error(status, body, lambda b: f"{b['choices'][0]['finish_reason']}, "
                                               f"{b['usage']['completion_tokens']} tok: {text(b)[:40]!r}")


def case_logprobs(s: Server) -> str:
    status, body = s.post({"messages": ASK, "temperature": 0, "max_tokens": 8, "logprobs": True,
                           "top_logprobs": 3})

    def describe(b):
        lps = b["choices"][0]["logprobs"]["content"]
        finite = all(-1e4 < t["logprob"] <= 0 for t in lps)
        top_ok = all(len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["token"] == t["token"] for t in lps)
        joined = "".join(t["token"] for t in lps) == text(b)
        return (f"{len(lps)} tokens, finite<=0 {finite}, top3 headed by greedy token {top_ok}, tokens=content "
                f"{joined}, first {lps[0]['logprob']:.4f}")
    return ok_or_error(status, body, describe)


def case_logprobs_stream(s: Server) -> str:
    status, events = s.post({"messages": ASK, "temperature": 0, "max_tokens": 8, "logprobs": True,
                             "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True}})

    def describe(ev):
        chunks = [e for e in ev if isinstance(e, dict)]
        lps = [t for e in chunks for c in e.get("choices", [])
               for t in (c.get("logprobs") or {}).get("content") or []]
        usage = chunks[-1].get("usage") if chunks else None
        return (f"{len(lps)} token log-probs in chunks, usage chunk last "
                f"{bool(usage) and chunks[-1]['choices'] == []}, ends [DONE] {ev[-1] == '[DONE]'}")
    return ok_or_error(status, events, describe)


def case_n2(s: Server) -> str:
    status, body = s.post({"messages": ASK, "n": 2, "max_tokens": 8, "seed": 11})

    def describe(b):
        ids = [c.get("response_id") for c in b["choices"]]
        return (f"{len(b['choices'])} choices, idx {[c['index'] for c in b['choices']]}, completion_tokens "
                f"{b['usage']['completion_tokens']}, per-choice ids {'distinct' if None not in ids else 'none'}")
    return ok_or_error(status, body, describe)


def case_n2_stream(s: Server) -> str:
    status, events = s.post({"messages": ASK, "n": 2, "max_tokens": 8, "seed": 11, "stream": True})

    def describe(ev):
        indices = sorted({c["index"] for e in ev if isinstance(e, dict) for c in e["choices"]})
        return f"indices {indices}, both texts non-empty {bool(streamed(ev, 0)) and bool(streamed(ev, 1))}"
    return ok_or_error(status, events, describe)


def case_stop(s: Server) -> str:
    _, free = s.post({"messages": ASK, "temperature": 0, "max_tokens": 16})
    words = text(free).split()
    stop = " " + words[len(words) // 2]
    prefix = text(free).split(stop)[0]
    _, stopped = s.post({"messages": ASK, "temperature": 0, "max_tokens": 16, "stop": [stop]})
    _, events = s.post({"messages": ASK, "temperature": 0, "max_tokens": 16, "stop": stop, "stream": True})
    return (f"stop {stop!r}: text = prefix {text(stopped) == prefix}, "
            f"finish {stopped['choices'][0]['finish_reason']}, streamed = prefix {streamed(events) == prefix}")


def case_max_completion_tokens(s: Server) -> str:
    status, body = s.post({"messages": ASK, "max_completion_tokens": 3})
    return ok_or_error(status, body, lambda b: f"{b['usage']['completion_tokens']} tokens, "
                                               f"{b['choices'][0]['finish_reason']}")


def case_seed(s: Server) -> str:
    texts = [text(s.post({"messages": ASK, "temperature": 1.0, "max_tokens": 10, "seed": seed})[1])
             for seed in (7, 7, 8)]
    return f"same seed same text {texts[0] == texts[1]}, other seed differs {texts[0] != texts[2]}"


def case_logit_bias(s: Server) -> str:
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(ARGS.model_dir)
    [hello] = tokenizer.encode("Hello", add_special_tokens=False)
    status, body = s.post({"messages": ASK, "temperature": 0, "max_tokens": 4, "logit_bias": {str(hello): 100}})
    return ok_or_error(status, body, lambda b: f"+100 on 'Hello': {text(b)!r}")


def case_penalties(s: Server) -> str:
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(ARGS.model_dir)
    repeat = [{"role": "user", "content": "Say the word 'cat' ten times, separated by spaces."}]
    _, plain = s.post({"messages": repeat, "temperature": 0, "max_tokens": 16})
    _, pen = s.post({"messages": repeat, "temperature": 0, "max_tokens": 16, "presence_penalty": 2.0,
                     "frequency_penalty": 2.0})

    def most_repeated(body) -> int:
        ids = tokenizer.encode(text(body), add_special_tokens=False)
        return max(ids.count(t) for t in set(ids))
    return f"most repeated token x{most_repeated(plain)} plain, x{most_repeated(pen)} penalised"


def case_json_schema(s: Server) -> str:
    status, body = s.post({"messages": CITY, "temperature": 0, "max_tokens": 48, "response_format": {
        "type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}})

    def describe(b):
        try:
            jsonschema.validate(json.loads(text(b)), CITY_SCHEMA)
            return f"valid: {text(b)[:50]}"
        except (ValueError, jsonschema.ValidationError) as exc:
            return f"INVALID ({type(exc).__name__}): {text(b)[:40]!r}"
    return ok_or_error(status, body, describe)


def case_json_object_stream(s: Server) -> str:
    ask = [{"role": "user", "content": "Reply in JSON with the keys name and age."}]
    status, events = s.post({"messages": ask, "temperature": 0, "max_tokens": 48, "stream": True,
                             "response_format": {"type": "json_object"}})

    def describe(ev):
        try:
            return f"object parses: {type(json.loads(streamed(ev))).__name__}"
        except ValueError:
            return f"does not parse: {streamed(ev)[:40]!r}"
    return ok_or_error(status, events, describe)


def case_json_object_without_word_json(s: Server) -> str:
    status, body = s.post({"messages": CITY, "max_tokens": 8, "response_format": {"type": "json_object"}})
    return ok_or_error(status, body, lambda b: f"200: {text(b)[:30]!r}")


def case_multibyte_stream(s: Server) -> str:
    schema = {"type": "object", "properties": {"w": {"const": WORD}}, "required": ["w"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    status, events = s.post({"messages": CITY, "temperature": 0, "max_tokens": 32, "stream": True,
                             "response_format": fmt})

    def describe(ev):
        pieces = [c["delta"].get("content") or "" for e in ev if isinstance(e, dict) for c in e["choices"]]
        try:
            whole = json.loads("".join(pieces)) == {"w": WORD}
        except ValueError:
            whole = False
        return f"no chunk has U+FFFD {not any(chr(0xFFFD) in p for p in pieces)}, JSON = const {whole}"
    return ok_or_error(status, events, describe)


def case_bad_schema(s: Server) -> str:
    return error_of(*s.post({"messages": CITY, "max_tokens": 8, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}))


def case_user(s: Server) -> str:
    status, body = s.post({"messages": ASK, "max_tokens": 2, "user": "u1", "safety_identifier": "h1",
                           "prompt_cache_key": "k", "store": True, "service_tier": "auto", "tool_choice": "none",
                           "modalities": ["text"]})
    return ok_or_error(status, body, lambda b: f"200, service_tier {b.get('service_tier')!r}")


def refused(fields: dict) -> Callable[[Server], str]:
    def run(s: Server) -> str:
        status, body = s.post({"messages": ASK, "max_tokens": 2, **fields})
        return error_of(status, body) if status != 200 else f"200 (accepted): {text(body)[:20]!r}"
    return run


def raw(content: bytes, content_type: str = "application/json") -> Callable[[Server], str]:
    return lambda s: error_of(*s.post(content=content, headers={"content-type": content_type}))


@dataclass
class Case:
    name: str
    run: Callable[[Server], str]
    openai: str  # what OpenAI's API reference implies
    note: str = ""  # why ours and vLLM's differ, when they do


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
VLLM_IGNORES = "vLLM accepts and ignores fields it does not implement (logs a warning); OpenAI would act on it"
NO_PARAM = "vLLM's 400 does not name the field (param null)"
FASTAPI_PARAM = "vLLM's param is FastAPI's location ('body.…'), not the field's name"
CASES = [
    Case("greedy", case_greedy, "200 text"),
    Case("logprobs", case_logprobs, "200, log-probs per token, top 3"),
    Case("logprobs_stream", case_logprobs_stream, "log-probs per chunk, usage chunk, [DONE]"),
    Case("n2", case_n2, "2 choices, usage summed", "per-choice response ids are our extension (for votes)"),
    Case("n2_stream", case_n2_stream, "chunks with index 0 and 1"),
    Case("stop", case_stop, "answer ends before the stop string"),
    Case("max_completion_tokens", case_max_completion_tokens, "3 tokens, length"),
    Case("seed", case_seed, "same seed, same answer (best effort)"),
    Case("logit_bias", case_logit_bias, "+100 forces the token"),
    Case("penalties", case_penalties, "fewer repeats"),
    Case("json_schema", case_json_schema, "valid JSON of the schema"),
    Case("json_object_stream", case_json_object_stream, "a JSON object"),
    Case("json_object_no_word_json", case_json_object_without_word_json, "400 (messages must mention JSON)",
         "OpenAI refuses json_object unless the messages mention JSON; vLLM does not check"),
    Case("multibyte_stream", case_multibyte_stream, "no split characters"),
    Case("bad_schema", case_bad_schema, "400 param=response_format", NO_PARAM),
    Case("user_and_noop_values", case_user, "200; service_tier in the response when set",
         "OpenAI returns the tier used when the request sets service_tier; vLLM returns null"),
    Case("tools", refused({"tools": [TOOL]}), "200 with tool calls (our model has no tool template: 400)",
         "both refuse (vLLM: tool calls need --enable-auto-tool-choice); " + NO_PARAM),
    Case("tool_choice_required", refused({"tools": [TOOL], "tool_choice": "required"}), "tool call",
         "both refuse; " + NO_PARAM),
    Case("functions", refused({"functions": [{"name": "f"}]}), "function call", VLLM_IGNORES),
    Case("parallel_tool_calls", refused({"parallel_tool_calls": True}), "400 without tools", VLLM_IGNORES),
    Case("audio", refused({"audio": {"voice": "alloy", "format": "wav"}}), "audio output", VLLM_IGNORES),
    Case("modalities_audio", refused({"modalities": ["text", "audio"]}), "audio output", VLLM_IGNORES),
    Case("prediction", refused({"prediction": {"type": "content", "content": "x"}}), "predicted output",
         VLLM_IGNORES),
    Case("web_search_options", refused({"web_search_options": {}}), "web search", VLLM_IGNORES),
    Case("reasoning_effort", refused({"reasoning_effort": "low"}), "400 on a non-reasoning model",
         "vLLM passes it to the chat template, which ignores it"),
    Case("verbosity", refused({"verbosity": "high"}), "longer answers", VLLM_IGNORES),
    Case("metadata", refused({"metadata": {"k": "v"}}), "stored with the completion", VLLM_IGNORES),
    Case("store_false", refused({"store": False}), "not stored",
         "we log every response for training, so we cannot honour false; vLLM stores nothing anyway"),
    Case("service_tier_priority", refused({"service_tier": "priority"}), "priority processing", VLLM_IGNORES),
    Case("prompt_cache_retention", refused({"prompt_cache_retention": "24h"}), "24 h cache", VLLM_IGNORES),
    Case("top_logprobs_21", refused({"logprobs": True, "top_logprobs": 21}), "400 param=top_logprobs",
         "vLLM checks its engine-wide max_logprobs and names 'logprobs'"),
    Case("n_0", refused({"n": 0}), "400 param=n", NO_PARAM),
    Case("temperature_2.5", refused({"temperature": 2.5}), "400 param=temperature (max 2)"),
    Case("logit_bias_out_of_vocab", refused({"logit_bias": {str(10**9): 1}}), "400 param=logit_bias"),
    Case("role_tool", refused({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]}),
         "400 (no tool call to answer)",
         "vLLM renders a tool message without a tool call as a plain turn; OpenAI refuses it"),
    Case("image_part", refused({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}), "400 on a text-only model",
         "both refuse; " + NO_PARAM),
    Case("unknown_field_echo", refused({"echo": True}), "400 unrecognized argument",
         "echo is vLLM's own extension; OpenAI refuses unknown fields, so do we"),
    Case("stream_options_without_stream", refused({"stream_options": {"include_usage": True}}),
         "400 param=stream_options"),
    Case("temperature_string", refused({"temperature": "hot"}), "400 param=temperature", FASTAPI_PARAM),
    Case("missing_messages", lambda s: error_of(*s.post({})), "400 param=messages", FASTAPI_PARAM),
    Case("unknown_model", lambda s: error_of(*s.post({"messages": ASK, "model": "gpt-4o"})), "404"),
    Case("malformed_json", raw(b"{not json"), "400", FASTAPI_PARAM + " (here a character offset)"),
    Case("body_is_array", raw(b"[1, 2]"), "400", FASTAPI_PARAM),
    Case("text_plain_body", raw(json.dumps({"model": MODEL_NAME, "messages": ASK}).encode(), "text/plain"), "400"),
    Case("oversize_body", raw(b'{"model": "' + b"x" * (2 << 20) + b'"}'), "413",
         "vLLM has no body limit: it reads and parses the 2 MiB, then answers the first validation error"),
]


def run_server(name: str, args, run: dict, cases: list[Case]) -> dict[str, dict]:
    """Start ``name``, run every case on it, stop it; return each case's observation and its time."""
    service, ready_path, headers = make_service(name, args, run["logs"], run["data_dir"], run["topic_prefix"])
    log(f"{name}: starting on port {service.port} (log {service.log_path})")
    service.start(ready_path=ready_path, timeout_s=args.startup_timeout)
    server, out = Server(service.url, headers), {}
    try:
        for case in cases:
            started = time.perf_counter()
            try:
                seen = case.run(server)
            except Exception as exc:  # a case that crashes is an observation too
                seen = f"case failed: {type(exc).__name__}: {str(exc)[:80]}"
            out[case.name] = {"observed": seen, "seconds": time.perf_counter() - started}
            log(f"{name}: {case.name}: {seen}")
    finally:
        service.stop()
        log(f"{name}: stopped")
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def print_table(cases: list[Case], results: dict, servers: list[str], title: str) -> None:
    """Rows: case, OpenAI, ours, plain vLLM, and why they differ when they do (rich if installed)."""
    header = ["case", "OpenAI", *("ours" if s == "ours" else "plain vLLM" for s in servers)]
    both = len(servers) == 2
    header += ["", "why they differ"] if both else []
    rows = []
    for case in cases:
        seen = [results[s][case.name]["observed"] for s in servers]
        row = [case.name, case.openai, *seen]
        if both:
            same = seen[0] == seen[1]
            row += ["=" if same else "≠", "" if same else (case.note or "see the observations")]
        rows.append(row)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for row in [header, *rows]:
            print(" | ".join(row))
        return
    table = Table(title=title, show_lines=True)
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row, style=None if not both or row[-2] == "=" else "yellow")
    Console(width=200).print(table)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", nargs="+", choices=["ours", "vllm"], default=["ours", "vllm"])
    p.add_argument("--cases", nargs="+", help="run only these cases (default: all)")
    p.add_argument("--startup-timeout", type=float, default=400.0, help="per server start (s)")
    p.add_argument("--model-dir", type=Path, default=ServiceSettings().base_model)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = ARGS = p.parse_args()
    servers = list(dict.fromkeys(args.servers))
    cases = [c for c in CASES if not args.cases or c.name in args.cases]

    stamp = utc_stamp()
    run = {"logs": args.out / "logs" / f"conformance-{stamp}",
           "topic_prefix": f"bench-conformance-{stamp}-{uuid.uuid4().hex[:6]}."}
    run["logs"].mkdir(parents=True, exist_ok=True)
    if "ours" in servers:
        ensure_topics(KafkaSettings(topic_prefix=run["topic_prefix"]))
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-conformance-") as data_dir:
        run["data_dir"] = Path(data_dir)
        for name in servers:
            results[name] = run_server(name, args, run, cases)
    elapsed = time.perf_counter() - started

    differ = [c.name for c in cases if len(servers) == 2
              and results[servers[0]][c.name]["observed"] != results[servers[1]][c.name]["observed"]]
    title = (f"Chat completions conformance: {len(cases)} cases, {len(differ)} differ; "
             f"SmolLM2-135M-Instruct, {elapsed / 60:.1f} min")
    print_table(cases, results, servers, title)
    path = write_json(f"conformance-{stamp}", {
        "benchmark": "conformance", "timestamp": stamp, "servers": servers, "elapsed_s": elapsed,
        "cases": [{"name": c.name, "openai": c.openai, "note": c.note,
                   **{s: results[s][c.name] for s in servers}} for c in cases],
        "differ": differ, "server_logs": str(run["logs"]),
    }, args.out, indent=2, ensure_ascii=False)
    print(f"wrote {path}")


ARGS: argparse.Namespace


if __name__ == "__main__":
    main()
