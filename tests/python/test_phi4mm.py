"""Phi-4-multimodal through the Python SDK: greedy answers identical to the PyTorch reference's
(tests/fixtures/goldens/phi4mm/generation.json) on the tiny fixture."""

from __future__ import annotations

import base64
import json

import pytest

from phive import ChatCompletionRequest, InvalidRequestError, Runner, VisionArchitecture, Which
from sdk_paths import FIXTURES, PHI4_MODEL, REPO


@pytest.fixture(scope="module")
def phi4():
    return Runner(which=Which.VisionPlain(model_id=str(PHI4_MODEL), arch=VisionArchitecture.Phi4MM))


@pytest.fixture(scope="module")
def phi4_cases():
    data = json.loads((FIXTURES / "goldens" / "phi4mm" / "generation.json").read_text())
    return {case["name"]: case for case in data["cases"]}


@pytest.mark.parametrize("name", ["text", "one_image", "two_images"])
def test_greedy_matches_golden(phi4, phi4_cases, name):
    case = phi4_cases[name]
    assert not case["audios"]
    *history, last = case["messages"]
    assert last["role"] == "user"
    # The golden writes the <|image_N|> tags itself; the images go as parts before the text.
    parts = [{"type": "image_url", "image_url": {"url": str(REPO / path)}} for path in case["images"]]
    parts.append({"type": "text", "text": last["content"]})
    messages = history + [{"role": "user", "content": parts}]
    res = phi4.send_chat_completion_request(
        ChatCompletionRequest(messages=messages, max_tokens=16, temperature=0.0)
    )
    assert res.choices[0].message.content == case["greedy_text"]
    assert res.usage.prompt_tokens == case["num_tokens"]


def test_architecture(phi4):
    assert phi4.architecture is VisionArchitecture.Phi4MM


@pytest.mark.parametrize("name", ["one_audio", "image_and_audio"])
def test_audio_cases_match_golden(phi4, phi4_cases, name):
    """Audio as OpenAI's input_audio (base64 + format), images as parts: the adapter is routed
    per request and the greedy answer equals the reference's."""
    case = phi4_cases[name]
    *history, last = case["messages"]
    parts = [{"type": "image_url", "image_url": {"url": str(REPO / path)}} for path in case["images"]]
    for path in case["audios"]:
        data = base64.b64encode((REPO / path).read_bytes()).decode()
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    parts.append({"type": "text", "text": last["content"]})
    res = phi4.send_chat_completion_request(
        ChatCompletionRequest(messages=history + [{"role": "user", "content": parts}], max_tokens=16, temperature=0.0)
    )
    assert res.choices[0].message.content == case["greedy_text"]
    assert res.usage.prompt_tokens == case["num_tokens"]


def test_undecodable_audio_is_refused_clearly(phi4):
    audio = {"data": base64.b64encode(b"RIFF not really a wave file").decode(), "format": "wav"}
    with pytest.raises(InvalidRequestError) as info:
        phi4.send_chat_completion_request(
            ChatCompletionRequest(
                messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}],
                max_tokens=4,
            )
        )
    assert "audio 1" in str(info.value), str(info.value)
