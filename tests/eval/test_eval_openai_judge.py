"""`--judge openai:MODEL` against a small OpenAI-compatible server on loopback that the test starts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dytune.cli import main
from dytune.errors import DytuneError
from dytune.eval.judge import judge_answers, make_judge
from dytune.eval.openai_judge import parse_rating


class _Handler(BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != "Bearer sk-test":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "bad key"}')
            return
        prompt = body["messages"][-1]["content"]
        # grade the answer under judgment: the last assistant turn in the prompt
        judged = prompt.rsplit("### Assistant A:\n", 1)[-1] if "### Assistant A:" in prompt else \
            prompt.split("[The Start of Assistant's Answer]\n", 1)[1]
        if "UNRATEABLE" in judged.split("<|The End", 1)[0].split("[The End", 1)[0]:
            reply = "I cannot decide."
        else:
            reply = "Fine. Rating: [[9]]" if judged.startswith("GOOD") else "Weak. [[3]]"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    yield _Handler
    httpd.shutdown()
    thread.join()


def test_parse_rating_like_fastchat():
    assert parse_rating("blah Rating: [[7]]") == 7.0
    assert parse_rating("[[8.5]]") == 8.5
    assert parse_rating("score [6]") == 6.0
    assert parse_rating("Rating: 4") == 4.0
    assert parse_rating("[[11]]") == -1.0 and parse_rating("no score") == -1.0


def test_single_answer_grading_end_to_end(server, tmp_path, questions_file, questions, make_answers):
    a = make_answers(tmp_path / "a.jsonl", "dyt", {q["question_id"]: ["GOOD one", "GOOD two"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "ln", {q["question_id"]: ["meh", "GOOD only here"] for q in questions})
    out = tmp_path / "oa"
    assert main(["judge", str(a), str(b), "--judge", "openai:judge-7b", "--questions", str(questions_file),
                 "--out", str(out), "--bootstrap", "100"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert len(server.requests) == 20  # 5 questions x 2 turns x 2 models, each graded once
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-7b" and first["body"]["temperature"] == 0.0
    assert result["mtbench_scores"]["dyt"]["overall"] == 9.0
    assert result["mtbench_scores"]["ln"]["per_turn"] == {"1": 3.0, "2": 9.0}
    assert result["summary"]["per_turn"]["1"]["win"] == 5 and result["summary"]["per_turn"]["2"]["tie"] == 5
    assert result["summary"]["overall"]["win_rate"] == 0.75
    assert "MT-bench single-answer grades" in out.with_suffix(".md").read_text()

    prompts = [r["body"]["messages"] for r in server.requests]
    math_t1 = [m for m in prompts if "What is 2+2?" in m[1]["content"] and "And 3+3?" not in m[1]["content"]]
    assert "[The Start of Reference Answer]\n4\n" in math_t1[0][1]["content"]  # single-math-v1 with the reference
    turn2 = [m for m in prompts if "Now shorter." in m[1]["content"] and "GOOD two" in m[1]["content"]][0]
    assert "focus on the assistant's answer to the second user question" in turn2[0]["content"]
    assert "### User:\nWrite a line.\n\n### Assistant A:\nGOOD one" in turn2[1]["content"]


def test_unparseable_grades_are_left_out(server, tmp_path, questions_file, questions, make_answers):
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["GOOD", "UNRATEABLE"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["bad", "bad"] for q in questions})
    result = judge_answers(a, b, judge=make_judge("openai:m"), questions_path=questions_file, n_boot=50)
    assert result["unjudged"] == 5 and result["summary"]["overall"]["n"] == 5
    assert result["summary"]["overall"]["win"] == 5


def test_server_errors_are_clear(server, monkeypatch, tmp_path, questions_file, questions, make_answers):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["x", "y"] for q in questions})
    with pytest.raises(DytuneError, match=r"judge server at http://127.0.0.1:\d+/v1/chat/completions failed "
                                          r"\(HTTP 401"):
        judge_answers(a, a, judge=make_judge("openai:m"), questions_path=questions_file)
    with pytest.raises(DytuneError, match="needs a model name"):
        make_judge("openai:")
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(DytuneError, match="needs OPENAI_API_KEY"):
        make_judge("openai:gpt-4o")
