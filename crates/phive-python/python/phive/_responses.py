"""Response objects, shaped like mistral.rs's (and OpenAI's): attribute access all the way down.

They are plain dataclasses built from the engine's JSON; ``repr`` shows every field and
``to_dict()`` gives the OpenAI-shaped dict back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = [
    "PromptTokensDetails",
    "Usage",
    "Timings",
    "TopLogprob",
    "ResponseLogprob",
    "Logprobs",
    "FunctionCall",
    "ToolCall",
    "ResponseMessage",
    "Choice",
    "ChatCompletionResponse",
    "Delta",
    "ChunkChoice",
    "ChatCompletionChunkResponse",
]


class _Record:
    def to_dict(self) -> Dict[str, Any]:
        """The OpenAI-shaped dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Any:
        """Builds the record from a dict, ignoring keys it does not know (newer engines)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class PromptTokensDetails(_Record):
    """OpenAI's breakdown of the prompt tokens."""

    cached_tokens: int = 0


@dataclass
class Usage(_Record):
    """Token counts and speeds (mistral.rs's nine fields), and OpenAI's
    ``prompt_tokens_details.cached_tokens`` (prompt tokens taken from the prefix cache). Times
    are in seconds; with several choices, times and rates cover all of them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_tok_per_sec: float = 0.0
    avg_prompt_tok_per_sec: float = 0.0
    avg_compl_tok_per_sec: float = 0.0
    total_time_sec: float = 0.0
    total_prompt_time_sec: float = 0.0
    total_completion_time_sec: float = 0.0
    prompt_tokens_details: PromptTokensDetails = field(default_factory=PromptTokensDetails)

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Usage":
        usage: Usage = super()._from(d)
        usage.prompt_tokens_details = PromptTokensDetails._from(d.get("prompt_tokens_details") or {})
        return usage


@dataclass
class Timings(_Record):
    """phive's timings of the first choice."""

    image_tokens: int
    time_to_first_token_ms: float
    prompt_tokens_per_second: float
    completion_tokens_per_second: float


@dataclass
class TopLogprob(_Record):
    """An alternative token and its log-probability."""

    token: str
    logprob: float
    bytes: List[int]


@dataclass
class ResponseLogprob(_Record):
    """A generated token, its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    bytes: List[int]
    top_logprobs: List[TopLogprob]


@dataclass
class Logprobs(_Record):
    """Log-probabilities of a choice (``logprobs=True``)."""

    content: List[ResponseLogprob]
    refusal: Optional[str] = None


@dataclass
class FunctionCall(_Record):
    """A function name and its arguments as a JSON string."""

    name: str
    arguments: str


@dataclass
class ToolCall(_Record):
    """One call of a function by the model (in a stream, the whole call on the last chunk)."""

    id: Optional[str]
    type: Optional[str]
    function: FunctionCall
    index: Optional[int] = None

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "ToolCall":
        return cls(
            id=d.get("id"),
            type=d.get("type"),
            function=FunctionCall._from(d["function"]),
            index=d.get("index"),
        )


def _tool_calls(calls: Optional[List[Dict[str, Any]]]) -> Optional[List[ToolCall]]:
    return None if calls is None else [ToolCall._from(c) for c in calls]


@dataclass
class ResponseMessage(_Record):
    """The assistant's answer: text, or ``None`` with ``tool_calls`` when it only called tools."""

    role: str
    content: Optional[str]
    tool_calls: Optional[List[ToolCall]] = None


@dataclass
class Choice(_Record):
    """One choice of a chat completion."""

    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: Optional[Logprobs] = None


@dataclass
class ChatCompletionResponse(_Record):
    """The answer to a non-streamed chat request."""

    id: str
    object: str
    created: int
    model: str
    choices: List[Choice]
    usage: Usage
    timings: Optional[Timings] = None
    system_fingerprint: Optional[str] = None


@dataclass
class Delta(_Record):
    """New output of a streamed choice (``content`` is ``""`` on the final chunk)."""

    content: Optional[str] = None
    role: Optional[str] = None
    tool_calls: Optional[List[ToolCall]] = None


@dataclass
class ChunkChoice(_Record):
    """One choice in a stream chunk; ``finish_reason`` is set on the choice's last chunk."""

    index: int
    delta: Delta
    finish_reason: Optional[str] = None
    logprobs: Optional[Logprobs] = None


@dataclass
class ChatCompletionChunkResponse(_Record):
    """One chunk of a streamed chat request. The last chunk carries ``usage``."""

    id: str
    object: str
    created: int
    model: str
    choices: List[ChunkChoice] = field(default_factory=list)
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


def _logprobs(d: Optional[Dict[str, Any]]) -> Optional[Logprobs]:
    if d is None:
        return None
    content = [
        ResponseLogprob(
            token=e["token"],
            logprob=e["logprob"],
            bytes=e["bytes"],
            top_logprobs=[TopLogprob._from(t) for t in e.get("top_logprobs", [])],
        )
        for e in d.get("content", [])
    ]
    return Logprobs(content=content, refusal=d.get("refusal"))


def response_from_dict(d: Dict[str, Any]) -> ChatCompletionResponse:
    """Builds a response from the engine's ``chat.completion`` dict."""
    choices = [
        Choice(
            index=c["index"],
            message=ResponseMessage(
                role=c["message"]["role"],
                content=c["message"]["content"],
                tool_calls=_tool_calls(c["message"].get("tool_calls")),
            ),
            finish_reason=c["finish_reason"],
            logprobs=_logprobs(c.get("logprobs")),
        )
        for c in d["choices"]
    ]
    timings = d.get("timings")
    return ChatCompletionResponse(
        id=d["id"],
        object=d["object"],
        created=d["created"],
        model=d["model"],
        choices=choices,
        usage=Usage._from(d["usage"]),
        timings=Timings._from(timings) if timings else None,
    )


def chunk_from_dict(d: Dict[str, Any]) -> ChatCompletionChunkResponse:
    """Builds a stream chunk from the engine's ``chat.completion.chunk`` dict."""
    choices = [
        ChunkChoice(
            index=c["index"],
            delta=Delta(
                content=c["delta"].get("content"),
                role=c["delta"].get("role"),
                tool_calls=_tool_calls(c["delta"].get("tool_calls")),
            ),
            finish_reason=c.get("finish_reason"),
            logprobs=_logprobs(c.get("logprobs")),
        )
        for c in d["choices"]
    ]
    usage = d.get("usage")
    return ChatCompletionChunkResponse(
        id=d["id"],
        object=d["object"],
        created=d["created"],
        model=d["model"],
        choices=choices,
        usage=Usage._from(usage) if usage else None,
    )
