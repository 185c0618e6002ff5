"""Crop limits from Python: ``num_crops`` / ``dynamic_hd`` per request on ChatCompletionRequest and
at load time on Runner, with the Hub processors' token counts and typed errors."""

from __future__ import annotations

import json

import pytest

from phive import ChatCompletionRequest, InvalidRequestError, Runner, Which
from sdk_paths import FIXTURES, IMAGES, MODEL


def image_tokens(num_crops: int) -> int:
    """The Hub processor's token count for wide_1000x600.png (goldens/crop_limits.json)."""
    cases = json.loads((FIXTURES / "goldens" / "crop_limits.json").read_text())["phi3v"]
    return next(c["num_image_tokens"] for c in cases if c["size"] == [1000, 600] and c["num_crops"] == num_crops)


def prompt_tokens(runner, **kwargs) -> int:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": str(IMAGES / "wide_1000x600.png")}},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    request = ChatCompletionRequest(messages=messages, max_tokens=1, **kwargs)
    return runner.send_chat_completion_request(request).usage.prompt_tokens


def test_per_request_and_load_time_num_crops(runner):
    four = prompt_tokens(runner)
    sixteen = prompt_tokens(runner, num_crops=16)
    assert sixteen - four == image_tokens(16) - image_tokens(4)
    assert prompt_tokens(runner, num_crops=1) - four == image_tokens(1) - image_tokens(4)
    loaded = Runner(which=Which.VisionPlain(model_id=str(MODEL)), num_crops=16)
    assert prompt_tokens(loaded) == sixteen
    assert prompt_tokens(loaded, num_crops=4) == four


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        ({"num_crops": 0}, "num_crops", "num_crops must be between 1 and 256, got 0"),
        ({"num_crops": 300}, "num_crops", "num_crops must be between 1 and 256, got 300"),
        ({"dynamic_hd": 4}, "dynamic_hd", "dynamic_hd (4) applies to Phi-4-multimodal only"),
    ],
)
def test_bad_request_limits(runner, kwargs, param, words):
    with pytest.raises(InvalidRequestError) as info:
        prompt_tokens(runner, **kwargs)
    assert words in str(info.value) and info.value.param == param


@pytest.mark.parametrize(
    "kwargs, words",
    [({"dynamic_hd": 16}, "applies to Phi-4-multimodal only"), ({"num_crops": 0}, "between 1 and 256")],
)
def test_bad_load_limits(kwargs, words):
    with pytest.raises(InvalidRequestError) as info:
        Runner(which=Which.VisionPlain(model_id=str(MODEL)), **kwargs)
    assert words in str(info.value) and info.value.param == next(iter(kwargs))
