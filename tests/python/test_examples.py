"""mistral.rs's Python examples (crates/phive-python/examples: only the import line changed, the
model and image made overridable) run against the tiny fixture checkpoint."""

from __future__ import annotations

import runpy
from typing import Any, Dict

import pytest

from sdk_paths import EXAMPLES, IMAGES, MODEL, PHI4_MODEL

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "avg_tok_per_sec",
    "avg_prompt_tok_per_sec",
    "avg_compl_tok_per_sec",
    "total_time_sec",
    "total_prompt_time_sec",
    "total_completion_time_sec",
)


def run_example(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Dict[str, Any]:
    monkeypatch.setenv("PHIVE_MODEL", str(MODEL))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def check_answer(namespace: Dict[str, Any], printed: str) -> None:
    res = namespace["res"]
    content = res.choices[0].message.content
    assert isinstance(content, str) and content
    assert res.choices[0].finish_reason in ("stop", "length")
    for field in USAGE_FIELDS:
        assert hasattr(res.usage, field), field
    assert res.usage.prompt_tokens > 700  # the 1000x600 image alone is 757 positions
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert content in printed and "Usage(" in printed


def test_phi3v_url_image(monkeypatch, capsys, image_server):
    ns = run_example("phi3v.py", monkeypatch, PHIVE_IMAGE_URL=image_server + "wide_1000x600.png")
    check_answer(ns, capsys.readouterr().out)


def test_phi3v_local_image(monkeypatch, capsys):
    ns = run_example("phi3v_local_img.py", monkeypatch, PHIVE_IMAGE_FILE=str(IMAGES / "wide_1000x600.png"))
    check_answer(ns, capsys.readouterr().out)


def test_phi3v_local_image_relative_path(monkeypatch, capsys):
    # As in the mistral.rs example: a bare file name, resolved against the working directory.
    monkeypatch.chdir(IMAGES)
    ns = run_example("phi3v_local_img.py", monkeypatch, PHIVE_IMAGE_FILE="wide_1000x600.png")
    check_answer(ns, capsys.readouterr().out)


def test_phi3v_base64_image(monkeypatch, capsys):
    ns = run_example("phi3v_base64.py", monkeypatch, PHIVE_IMAGE_FILE=str(IMAGES / "wide_1000x600.png"))
    check_answer(ns, capsys.readouterr().out)


def test_same_answer_from_url_path_and_base64(monkeypatch, capsys, image_server):
    # The three examples differ only in how the image travels (and base64's shorter prompt), so
    # the two with the same prompt must agree exactly.
    url = run_example("phi3v.py", monkeypatch, PHIVE_IMAGE_URL=image_server + "wide_1000x600.png")["res"]
    local = run_example("phi3v_local_img.py", monkeypatch, PHIVE_IMAGE_FILE=str(IMAGES / "wide_1000x600.png"))[
        "res"
    ]
    assert url.choices[0].message.content == local.choices[0].message.content
    assert url.usage.prompt_tokens == local.usage.prompt_tokens


def test_streaming(monkeypatch, capsys):
    ns = run_example("streaming.py", monkeypatch)
    printed = capsys.readouterr().out
    assert printed.count("ChatCompletionChunkResponse(") >= 2
    assert "finish_reason='length'" in printed or "finish_reason='stop'" in printed
    assert ns["chunk"].usage is not None and ns["chunk"].choices[0].finish_reason is not None


def test_phi4mm_image_tag_example(monkeypatch, capsys, image_server):
    monkeypatch.setenv("PHIVE_PHI4_MODEL", str(PHI4_MODEL))
    ns = run_example("phi4mm.py", monkeypatch, PHIVE_IMAGE_URL=image_server + "wide_1000x600.png")
    res = ns["res"]
    assert isinstance(res.choices[0].message.content, str) and res.choices[0].message.content
    assert res.usage.prompt_tokens > 700
    assert res.choices[0].message.content in capsys.readouterr().out
