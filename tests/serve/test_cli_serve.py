"""`dlforge serve` as a command: one-line errors before the server starts, and SIGTERM: stop accepting,
finish the requests in flight, exit."""
import json
import signal
import socket
import threading

import httpx
import pytest

from dlforge.cli import main
from tests.serve.conftest import free_port, serve_process


@pytest.mark.parametrize("args, says", [
    (["/nonexistent/run"], "/nonexistent/run: not a dlforge run directory (no config.json)"),
    (["RUN", "--host", "0.0.0.0"], "--host 0.0.0.0: serving beyond this machine needs --token-file FILE"),
    (["RUN", "--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: cannot read it"),
    (["RUN", "--queue-size", "0"], "--queue-size: expected at least 1, got 0"),
    # before: --timeout nan was a traceback, and --max-wait-ms nan started a server whose batcher died
    (["RUN", "--timeout", "nan"], "--timeout: expected a positive, finite number of seconds, got nan"),
    (["RUN", "--max-wait-ms", "inf"], "--max-wait-ms: expected 0 or more milliseconds, finite, got inf"),
])
def test_bad_serve_arguments_are_one_line(args, says, runs, capsys, reliability):
    args = [str(runs["gpt"]) if a == "RUN" else a for a in args]
    assert main(["serve", *args, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlforge: error: {says}") and err.count("\n") == 1
    reliability.record("`dlforge serve` given a bad run, a public address without a token, a bad token file",
                       "exit 2 with one line, before the server starts")


@pytest.mark.parametrize("port", ["99999", "-5", "in use"])
def test_a_port_out_of_range_or_in_use_is_one_line_before_the_runs_load(port, runs, capsys, reliability):
    # before: uvicorn took 99999 (printing it, listening on another port), and said -5 or a port in use in its
    # own log lines, exit code 3
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = str(taken.getsockname()[1]) if port == "in use" else port
        assert main(["serve", str(runs["gpt"]), "--port", number]) == 2
    err = capsys.readouterr().err
    says = (f"--port {number}: cannot listen on 127.0.0.1:{number} (Address already in use)" if port == "in use"
            else f"--port: expected 1..65535, got {port}")
    assert err == f"dlforge: error: {says}\n"
    reliability.record("`dlforge serve --port` out of range (99999, -5) or in use", "exit 2 with one line, before the "
                       "runs load")


def test_sigterm_finishes_requests_in_flight_then_exits(runs, tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    auth = {"Authorization": "Bearer 0123456789abcdef-token"}
    with serve_process([runs["gpt"]], "--token-file", str(token)) as (proc, base):
        events, first = [], threading.Event()

        def stream():
            body = {"prompt": "the ", "max_new_tokens": 512, "temperature": 0.8, "stream": True}
            with httpx.stream("POST", f"{base}/v1/models/gpt/generate", json=body, headers=auth, timeout=60) as r:
                events.append(r.status_code)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        first.set()
        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(30)
        proc.send_signal(signal.SIGTERM)
        at_signal = len(events)
        t.join(60)
        proc.wait(30)
        assert proc.returncode in (0, -signal.SIGTERM)
        assert at_signal < 100 and events[0] == 200 and events[-1]["tokens"] == 512  # in flight, then finished
        assert len("".join(e["text"] for e in events[1:-1])) == len(events[-1]["completion"])
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", headers=auth, timeout=2)
        # where it listens: uvicorn, given the socket, said nowhere
        assert f"dlforge: serving gpt at {base}/ (the playground), {base}/docs (the API); Ctrl-C stops\n" in \
            proc.stderr.read()
