"""``llmcal serve``: the calibrated model behind an OpenAI-compatible API and a web page.

    llmcal serve --run runs/NAME                  # the run's model, with the run's calibration
    llmcal serve --upstream http://127.0.0.1:8080/v1 --run runs/NAME   # a calibrating proxy (vLLM, llama.cpp)
    LLMCAL_API_KEY=secret llmcal serve --run runs/NAME --host 0.0.0.0

Needs the ``serve`` extra (fastapi, uvicorn, httpx).  See docs/serve.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``llmcal``'s subcommands."""
    p = subparsers.add_parser("serve", help="serve the calibrated model: OpenAI-compatible API + web page",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and calibration")
    g.add_argument("--run", default=None,
                   help="run folder whose model and calibration to serve; needed when runs/ holds more than "
                        "one calibrated run (the one there is used otherwise, and named at start); "
                        "'none' = uncalibrated")
    g.add_argument("--model_args", "--model-args", default="",
                   help="without a run: the model (lm-eval style, empty = the embedded model); with a run it "
                        "must match the run's")
    g.add_argument("--upstream", default=None, metavar="URL",
                   help="answer through this OpenAI-compatible server (e.g. http://127.0.0.1:8080/v1: vLLM, "
                        "llama.cpp) instead of a local model; the run calibrates its answers")
    g.add_argument("--upstream_args", "--upstream-args", default="",
                   help="more for the upstream, as `--model openai --model_args`: model=NAME, "
                        "api_key_env=VAR (default OPENAI_API_KEY), scoring=auto|echo|forced, tokenizer=..., "
                        "timeout=S, max_retries=N")
    g.add_argument("--threshold", type=float, default=None, help="abstain below (default: the run's, 0.75)")
    g.add_argument("--high", type=float, default=None, help="'very sure' from (default 0.90)")
    g.add_argument("--no_probe", "--no-probe", action="store_true",
                   help="ignore the run's probe (use the calibrated internal signal, not `combined`)")
    g.add_argument("--policy", default="answer", choices=["answer", "refuse"],
                   help="an abstained answer's content: the model's answer, with confidence.abstained true "
                        "(answer, the OpenAI-compatible default), or the safe refusal (refuse); a request's "
                        "`policy` field overrides it")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api_key_env", "--api-key-env", default="LLMCAL_API_KEY",
                   help="environment variable holding the API key; when it is set, /v1/* need it "
                        "(default LLMCAL_API_KEY; set but empty = refused, the server does not start)")
    s.add_argument("--request_timeout", "--request-timeout", type=float, default=60.0,
                   help="seconds a request may take from its arrival, waiting included; later ones get 504 "
                        "(default 60)")
    s.add_argument("--allowed_hosts", "--allowed-hosts", default=None,
                   help="comma-separated Host names the server answers to ('*' = any); default: "
                        "127.0.0.1,localhost,::1 on a loopback --host (DNS rebinding), any otherwise")
    s.add_argument("--max_queue", "--max-queue", type=int, default=16,
                   help="requests allowed to wait for the model; more get 503 (default 16)")
    s.add_argument("--max_prompt_chars", "--max-prompt-chars", type=int, default=8000,
                   help="longest prompt accepted, in characters; longer get 413 (default 8000)")
    s.add_argument("--log_level", "--log-level", default="info", choices=["critical", "error", "warning", "info"])
    a = p.add_argument_group("answer log and feedback (docs/serve.md)")
    a.add_argument("--db", default="sqlite:///runs/serve.db",
                   help="log every answer here, with /v1/feedback, /v1/monitor and /dashboard: sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/NAME (default sqlite:///runs/serve.db; 'off' = no log)")
    a.add_argument("--log_text", "--log-text", choices=["on", "off"], default="on",
                   help="off = store sha256 hashes of questions and answers, never their text (default on)")
    a.add_argument("--retention_days", "--retention-days", type=float, default=None,
                   help="delete logged answers older than this (default: keep; 30 with --log_text off)")
    p.set_defaults(func=cmd_serve)


def build_answerer(args: argparse.Namespace):
    """The answerer the arguments describe (loads the model; may take seconds)."""
    from llmcal.backends.model_args import parse_model_args
    from llmcal.backends.registry import parse_backend_args

    run: Path | None
    if args.run and args.run.lower() == "none":
        run = None
    elif args.run:
        run = Path(args.run)
    else:
        from llmcal.pipeline.ask import choose_run

        try:
            run = choose_run()  # the only calibrated run; several are refused (ValueError: exit 2)
        except FileNotFoundError:
            run = None
        if run is not None:
            print(f"llmcal serve: serving {run} (the only calibrated run under runs/; --run to choose)",
                  file=sys.stderr)
            args.run = str(run)  # what was chosen is what later steps (the answer log) see
    if run is None:
        print("llmcal serve: no calibrated run; confidences are raw (uncalibrated)", file=sys.stderr)
    upstream = None
    if args.upstream:
        upstream = parse_backend_args("openai", f"base_url={args.upstream},{args.upstream_args}")
    elif args.upstream_args:
        raise ValueError("--upstream_args needs --upstream URL")
    from llmcal.serve.answerer import Answerer

    # an upstream (--upstream, or a run made with --model openai) must not hold the only worker past the
    # request deadline: each attempt gets half of it, wall-clock, and there is one retry
    budget = getattr(args, "request_timeout", None) or 60.0
    defaults = {"timeout": max(1.0, budget / 2), "max_retries": 1}
    return Answerer.load(run, parse_model_args(args.model_args) if not upstream else None, high=args.high,
                         abstain=args.threshold, use_probe=not args.no_probe, upstream=upstream,
                         upstream_defaults=defaults)


def api_key_from_env(name: str) -> str | None:
    """The API key in ``$name``; None when unset.  Set but empty (or only spaces) is refused: it would
    otherwise turn authentication off without a word."""
    if name not in os.environ:
        return None
    key = os.environ[name]
    if not key.strip():
        raise ValueError(f"${name} is set but empty: set it to the API key, or unset it to serve without one "
                         "(an empty key would turn authentication off)")
    return key


def parse_allowed_hosts(text: str | None, host: str) -> list[str] | None:
    """``--allowed_hosts`` as a list (None = any Host); the loopback names by default on a loopback ``host``."""
    if text is None:
        return list(LOOPBACK) if host in LOOPBACK else None
    names = [h.strip() for h in text.split(",") if h.strip()]
    if not names:
        raise ValueError("--allowed_hosts: give host names (comma-separated) or '*'")
    return None if "*" in names else names


def cmd_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: {args.port} is not a TCP port")
    if args.max_queue < 0 or args.max_prompt_chars < 1:
        raise ValueError("--max_queue must be >= 0 and --max_prompt_chars >= 1")
    if not (args.request_timeout > 0 and args.request_timeout < float("inf")):
        raise ValueError(f"--request_timeout must be a number of seconds > 0, got {args.request_timeout}")
    api_key = api_key_from_env(args.api_key_env)
    allowed_hosts = parse_allowed_hosts(args.allowed_hosts, args.host)
    try:
        import uvicorn

        from llmcal.serve.app import create_app
    except ImportError as err:
        raise ValueError(f"llmcal serve needs the serve extra: pip install 'llmcal[serve]' ({err})") from None
    if api_key is None and args.host not in LOOPBACK:
        print(f"llmcal serve: warning: listening on {args.host} without an API key (set {args.api_key_env})",
              file=sys.stderr)
    answerer = build_answerer(args)
    from llmcal.serve.answerer import Query

    answerer.answer(Query("Warm-up?", ["yes", "no"]))  # the first call pays for lazy set-up, not a user
    from llmcal.serve.feedback_api import answer_log_wiring

    run_dir = None if not args.run or args.run.lower() == "none" else args.run
    log_kw, close_log = answer_log_wiring(args.db, args.log_text == "on", args.retention_days, run_dir)
    app = create_app(answerer, api_key=api_key, max_prompt_chars=args.max_prompt_chars, max_queue=args.max_queue,
                     request_timeout=args.request_timeout, allowed_hosts=allowed_hosts, policy=args.policy,
                     reload_on_sighup=True, **log_kw)
    host = f"[{args.host}]" if ":" in args.host else args.host
    served = answerer.describe()
    print(f"llmcal serve: run {served.get('run') or 'none'} (calibration {served.get('calibration_version')}, "
          f"abstain below {answerer.thresholds.abstain:g}, policy {args.policy})", file=sys.stderr)
    print(f"llmcal serve: {answerer.model_name} on http://{host}:{args.port}/ "
          f"({'API key required' if api_key else 'no API key'}; POST /admin/reload or SIGHUP reloads the "
          "calibration)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    finally:
        close_log()  # what the recorder still holds is written before the process ends
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m llmcal.cli.serve_commands ARGS`` = ``llmcal serve ARGS``."""
    from llmcal.cli.main import main as llmcal_main

    return llmcal_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
