"""Ctrl-C cancels the running request cleanly (KeyboardInterrupt propagates, the engine stops
generating, the runner keeps working), and so does closing a stream."""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest

from phive import ChatCompletionRequest

# Long enough that it cannot finish before the interrupt (the tiny model does ~1000 tokens/s; the
# full budget would take minutes).
LONG = 100_000


def long_request(stream: bool = False) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        messages=[{"role": "user", "content": "Hello"}], max_tokens=LONG, temperature=0.0, stream=stream
    )


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """`_thread.interrupt_main` does nothing while SIGINT is ignored, which it is in a shell's
    background jobs (some CI launchers): install Python's own handler for these tests."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_after(seconds: float) -> threading.Timer:
    """Simulates Ctrl-C: raises KeyboardInterrupt in the main thread after `seconds`."""
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def wait_cancelled(runner, before: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = runner.stats()
        if stats["cancelled"] > before and stats["active"] == 0:
            return
        time.sleep(0.01)
    pytest.fail(f"the engine did not cancel the request: {runner.stats()}")


def check_still_works(runner, golden_cases):
    case = golden_cases["text"]
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(messages=case["openai_messages"], max_tokens=16, temperature=0.0)
    )
    assert res.choices[0].message.content == case["greedy_text"]


def test_ctrl_c_cancels_a_request(runner, golden_cases):
    before = runner.stats()["cancelled"]
    timer = interrupt_after(0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.send_chat_completion_request(long_request())
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 5, f"KeyboardInterrupt took {elapsed:.2f}s to arrive"
    wait_cancelled(runner, before)
    check_still_works(runner, golden_cases)


def test_ctrl_c_while_iterating_a_stream(runner, golden_cases):
    before = runner.stats()["cancelled"]
    stream = runner.send_chat_completion_request(long_request(stream=True))
    received = 0
    timer = interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            received += 1
    timer.join()
    assert received > 1
    wait_cancelled(runner, before)
    # The stream is over: iterating again ends at once.
    assert list(stream) == []
    check_still_works(runner, golden_cases)


def test_closing_a_stream_cancels_it(runner, golden_cases):
    before = runner.stats()["cancelled"]
    with runner.send_chat_completion_request(long_request(stream=True)) as stream:
        first = [next(stream) for _ in range(3)]
    assert first[0].choices[0].delta.role == "assistant"
    wait_cancelled(runner, before)
    check_still_works(runner, golden_cases)


def test_dropping_a_stream_cancels_it(runner, golden_cases):
    before = runner.stats()["cancelled"]
    stream = runner.send_chat_completion_request(long_request(stream=True))
    next(stream)
    del stream
    wait_cancelled(runner, before)
    check_still_works(runner, golden_cases)
