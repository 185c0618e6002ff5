"""Structured output, tools and logit_bias through the Python SDK (mistral.rs's request
fields and OpenAI's), on the tiny random-weight Phi-3.5-vision fixture: only the constraint
makes the output valid."""

from __future__ import annotations

import json
import re

import pytest

from phive import ChatCompletionRequest, InvalidRequestError

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}


def ask(runner, **kwargs):
    kwargs.setdefault("max_tokens", 80)
    kwargs.setdefault("temperature", 0.0)
    messages = kwargs.pop("messages", [{"role": "user", "content": "Data please."}])
    return runner.send_chat_completion_request(ChatCompletionRequest(model="default", messages=messages, **kwargs))


def check(value):
    assert set(value) == {"n", "ok"} and 0 <= value["n"] <= 9 and isinstance(value["ok"], bool), value


def test_response_format_and_mistral_grammar_fields(runner):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    check(json.loads(ask(runner, response_format=fmt).choices[0].message.content))
    check(json.loads(ask(runner, grammar=json.dumps(SCHEMA), grammar_type="json_schema").choices[0].message.content))
    text = ask(runner, grammar="[a-c]{3}-[0-9]", grammar_type="regex").choices[0].message.content
    assert re.fullmatch("[a-c]{3}-[0-9]", text), text
    text = ask(runner, grammar='start: "v" /[0-9]{2}/', grammar_type="lark").choices[0].message.content
    assert re.fullmatch("v[0-9]{2}", text), text
    # Streamed, every chunk's text joins to valid JSON.
    chunks = runner.send_chat_completion_request(ChatCompletionRequest(
        model="default", messages=[{"role": "user", "content": "Data"}], max_tokens=80, temperature=0.0,
        response_format=fmt, stream=True))
    check(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)))


def test_tools_required_and_named(runner):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}}
    # One call per answer: a random-weight model allowed several repeats calls until max_tokens.
    for kwargs in ({"tools": [tool], "tool_choice": "required", "parallel_tool_calls": False},
                   {"tool_schemas": [json.dumps(tool["function"])],
                    "tool_choice": {"type": "function", "function": {"name": "lookup"}}}):
        res = ask(runner, **kwargs)
        choice = res.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "lookup" and call.id.startswith("call_")
        check(json.loads(call.function.arguments))


def test_logit_bias_forces_a_token(runner):
    res = ask(runner, max_tokens=4, logit_bias={278: 100})
    assert res.choices[0].message.content.split() == ["the"] * 4


@pytest.mark.parametrize("kwargs, param", [
    ({"grammar": "[a-", "grammar_type": "regex"}, None),
    ({"grammar": "x", "grammar_type": "ebnf"}, "grammar_type"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"logit_bias": {1: 500}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
])
def test_bad_constraints_raise_typed_errors(runner, kwargs, param):
    with pytest.raises(InvalidRequestError) as e:
        ask(runner, **kwargs)
    if param:
        assert e.value.param == param, e.value
