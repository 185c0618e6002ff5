"""``Runner``, ``Which``, ``VisionArchitecture`` and ``ChatCompletionRequest``, shaped like
mistral.rs's Python API so its examples run with only the import line changed.

Options mistral.rs has and phive cannot honour are accepted only at their neutral value
(``None``, ``False``...): any other value raises :class:`~phive.InvalidRequestError` with
``code="unsupported_parameter"`` instead of being silently ignored. Options that only tune
mistral.rs's GPU memory or batching (paged attention, device layers) are accepted and have no
effect, since they do not change what is generated; ``prefix_cache_n=0`` turns the prefix cache
off, as in mistral.rs (another count keeps it on: phive's cache is bounded by KV memory, not by
a number of prefixes).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import _phive
from ._errors import InvalidRequestError
from ._responses import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    chunk_from_dict,
    response_from_dict,
)

__all__ = [
    "VisionArchitecture",
    "MultimodalArchitecture",
    "Which",
    "ChatCompletionRequest",
    "ChatCompletionStream",
    "Runner",
]


def _unsupported(name: str, value: Any, why: str = "") -> InvalidRequestError:
    message = f"{name}={value!r} is not supported by phive"
    if why:
        message += f"; {why}"
    return InvalidRequestError(message, param=name, code="unsupported_parameter")


class VisionArchitecture(str, enum.Enum):
    """Model families phive runs (mistral.rs's ``VisionArchitecture`` members it implements)."""

    Phi3V = "phi3v"
    """``microsoft/Phi-3.5-vision-instruct`` (and Phi-3-vision)."""
    Phi4MM = "phi4mm"
    """``microsoft/Phi-4-multimodal-instruct``."""

    def __str__(self) -> str:
        return self.value


MultimodalArchitecture = VisionArchitecture
"""mistral.rs's newer name for :class:`VisionArchitecture`."""


def _arch_value(arch: Union[VisionArchitecture, str, None]) -> Optional[str]:
    if arch is None:
        return None
    if isinstance(arch, VisionArchitecture):
        return arch.value
    if isinstance(arch, str):
        for member in VisionArchitecture:
            if arch.lower() in (member.value, member.name.lower()):
                return member.value
    names = ", ".join(f"VisionArchitecture.{m.name}" for m in VisionArchitecture)
    raise InvalidRequestError(f"unknown arch {arch!r}; phive supports {names}", param="arch")


_DTYPES = {"auto": "auto", "f32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16", "f16": "f16",
           "float16": "f16"}


def _dtype_value(dtype: Any) -> Optional[str]:
    """The language model's precision as the native engine names it (mistral.rs's ``ModelDType``
    members or their names: Auto, F32, BF16, F16)."""
    if dtype is None:
        return None
    value = _DTYPES.get(str(getattr(dtype, "name", dtype)).lower())
    if value is None:
        raise _unsupported("dtype", dtype, "expected auto, f32, bf16 or f16")
    return value


class Which:
    """What model to load (mistral.rs's ``Which``). phive runs vision-language checkpoints in
    the Hugging Face layout: use :class:`Which.VisionPlain` (or its newer name
    :class:`Which.MultimodalPlain`)."""

    @dataclass
    class VisionPlain:
        """A safetensors checkpoint: a local folder or a Hugging Face model id.

        ``arch`` is optional (detected from ``config.json``); when given it must match the
        checkpoint. ``revision`` (a phive extension) picks a Hub branch, tag or commit.
        ``repeat_last_n`` is accepted for compatibility and ignored (phive's penalties see the
        whole text). The other mistral.rs options must stay unset.
        """

        model_id: str
        arch: Optional[VisionArchitecture] = None
        tokenizer_json: Optional[str] = None
        topology: Optional[str] = None
        write_uqff: Optional[str] = None
        from_uqff: Optional[Any] = None
        dtype: Optional[Any] = None
        max_edge: Optional[int] = None
        calibration_file: Optional[str] = None
        imatrix: Optional[str] = None
        auto_map_params: Optional[Any] = None
        hf_cache_path: Optional[str] = None
        repeat_last_n: Optional[int] = None
        revision: Optional[str] = None

        def _check(self) -> None:
            hints = {
                "tokenizer_json": "phive reads tokenizer.json from the checkpoint",
                "hf_cache_path": "set the HF_HUB_CACHE environment variable instead",
            }
            for name in (
                "tokenizer_json",
                "topology",
                "write_uqff",
                "from_uqff",
                "max_edge",
                "calibration_file",
                "imatrix",
                "auto_map_params",
                "hf_cache_path",
            ):
                value = getattr(self, name)
                if value is not None:
                    raise _unsupported(name, value, hints.get(name, ""))
            _dtype_value(self.dtype)
            if not isinstance(self.model_id, str) or not self.model_id:
                raise InvalidRequestError("model_id must be a non-empty string", param="model_id")

    MultimodalPlain = VisionPlain


_Message = Mapping[str, Any]


class ChatCompletionRequest:
    """A chat request (mistral.rs's ``ChatCompletionRequest``, OpenAI's fields).

    ``messages`` are OpenAI-shaped dicts; image parts are
    ``{"type": "image_url", "image_url": {"url": ...}}`` where the url is an http(s) URL, a
    ``data:`` URL, raw base64 or a local path (relative to the working directory). ``model`` is
    informational. ``stop`` is an alias of ``stop_seqs``; ``n_choices`` is OpenAI's ``n``.

    Structured output: OpenAI's ``response_format``, or mistral.rs's ``grammar`` with
    ``grammar_type`` ``"regex"``, ``"lark"`` or ``"json_schema"`` (a dict or its JSON text).
    Tools: OpenAI's ``tools`` (dicts), or mistral.rs's ``tool_schemas`` (their JSON texts), with
    ``tool_choice`` and ``parallel_tool_calls``.

    ``num_crops`` (Phi-3.5-vision) and ``dynamic_hd`` (Phi-4-multimodal) are phive's per-request
    crop limits (the HTTP server's fields of the same names).
    Values are validated when the request is sent, with the same rules and messages as phive's
    HTTP server.
    """

    def __init__(
        self,
        messages: Sequence[_Message],
        model: str = "default",
        logit_bias: Optional[Mapping[int, float]] = None,
        logprobs: bool = False,
        top_logprobs: Optional[int] = None,
        max_tokens: Optional[int] = None,
        n_choices: int = 1,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        stop_seqs: Optional[Union[str, Sequence[str]]] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        stream: bool = False,
        top_k: Optional[int] = None,
        grammar: Optional[str] = None,
        grammar_type: Optional[str] = None,
        min_p: Optional[float] = None,
        tool_schemas: Optional[Sequence[str]] = None,
        tool_choice: Optional[Any] = None,
        dry_multiplier: Optional[float] = None,
        dry_base: Optional[float] = None,
        dry_allowed_length: Optional[int] = None,
        dry_sequence_breakers: Optional[Sequence[str]] = None,
        web_search_options: Optional[Any] = None,
        enable_thinking: Optional[bool] = None,
        truncate_sequence: bool = False,
        reasoning_effort: Optional[str] = None,
        ignore_eos: bool = False,
        seed: Optional[int] = None,
        stop: Optional[Union[str, Sequence[str]]] = None,
        max_completion_tokens: Optional[int] = None,
        response_format: Optional[Mapping[str, Any]] = None,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        parallel_tool_calls: Optional[bool] = None,
        num_crops: Optional[int] = None,
        dynamic_hd: Optional[int] = None,
    ) -> None:
        self.messages = messages
        self.model = model
        self.logit_bias = logit_bias
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.n_choices = n_choices
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.repetition_penalty = repetition_penalty
        self.stop_seqs = stop_seqs
        self.temperature = temperature
        self.top_p = top_p
        self.stream = stream
        self.top_k = top_k
        self.grammar = grammar
        self.grammar_type = grammar_type
        self.min_p = min_p
        self.tool_schemas = tool_schemas
        self.tool_choice = tool_choice
        self.dry_multiplier = dry_multiplier
        self.dry_base = dry_base
        self.dry_allowed_length = dry_allowed_length
        self.dry_sequence_breakers = dry_sequence_breakers
        self.web_search_options = web_search_options
        self.enable_thinking = enable_thinking
        self.truncate_sequence = truncate_sequence
        self.reasoning_effort = reasoning_effort
        self.ignore_eos = ignore_eos
        self.seed = seed
        self.stop = stop
        self.max_completion_tokens = max_completion_tokens
        self.response_format = response_format
        self.tools = tools
        self.parallel_tool_calls = parallel_tool_calls
        self.num_crops = num_crops
        self.dynamic_hd = dynamic_hd

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v not in (None, False))
        return f"ChatCompletionRequest({fields})"

    def _check_unsupported(self) -> None:
        for name in ("web_search_options", "reasoning_effort"):
            value = getattr(self, name)
            if value is not None:
                raise _unsupported(name, value)
        if self.dry_multiplier not in (None, 0, 0.0):
            raise _unsupported("dry_multiplier", self.dry_multiplier, "DRY sampling is not implemented")
        if self.enable_thinking:
            raise _unsupported("enable_thinking", self.enable_thinking, "Phi models have no thinking mode")
        for name in ("truncate_sequence", "ignore_eos"):
            if getattr(self, name):
                raise _unsupported(name, True)

    def _to_openai(self, default_seed: Optional[int] = None) -> Dict[str, Any]:
        """The OpenAI request body phive's engine validates."""
        self._check_unsupported()
        if isinstance(self.messages, (str, bytes)) or not isinstance(self.messages, Sequence):
            raise InvalidRequestError(
                "messages must be a list of OpenAI-style message dicts "
                '(e.g. [{"role": "user", "content": "Hello"}])',
                param="messages",
            )
        if self.stop is not None and self.stop_seqs is not None:
            raise InvalidRequestError("pass stop_seqs or stop, not both", param="stop_seqs")
        stop = self.stop if self.stop is not None else self.stop_seqs
        if isinstance(stop, (list, tuple)):
            stop = list(stop)
        body: Dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages),
            "max_tokens": self.max_tokens,
            "max_completion_tokens": self.max_completion_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
            "stop": stop,
            "seed": self.seed if self.seed is not None else default_seed,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "n": self.n_choices,
            "stream": bool(self.stream),
            "num_crops": self.num_crops,
            "dynamic_hd": self.dynamic_hd,
        }
        if self.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in dict(self.logit_bias).items()}
        body["grammar"] = self._grammar()
        body["tools"] = self._tools()
        body["tool_choice"] = self.tool_choice
        body["parallel_tool_calls"] = self.parallel_tool_calls
        body["response_format"] = None if self.response_format is None else dict(self.response_format)
        return {k: v for k, v in body.items() if v is not None}

    def _grammar(self) -> Optional[Dict[str, Any]]:
        """mistral.rs's ``grammar``/``grammar_type`` as phive's ``grammar`` field."""
        if self.grammar is None and self.grammar_type is None:
            return None
        if self.grammar is None or self.grammar_type not in ("regex", "lark", "json_schema"):
            raise InvalidRequestError(
                'grammar needs grammar_type "regex", "lark" or "json_schema" (and grammar_type a grammar)',
                param="grammar_type",
            )
        value: Any = self.grammar
        if self.grammar_type == "json_schema" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise InvalidRequestError(f"grammar is not valid JSON: {e}", param="grammar") from None
        return {"type": self.grammar_type, "value": value}

    def _tools(self) -> Optional[List[Any]]:
        """``tools``, or mistral.rs's ``tool_schemas`` (JSON texts of tools or bare functions)."""
        if self.tools is not None and self.tool_schemas is not None:
            raise InvalidRequestError("pass tools or tool_schemas, not both", param="tool_schemas")
        if self.tool_schemas is None:
            return None if self.tools is None else [dict(t) for t in self.tools]
        tools = []
        for schema in self.tool_schemas:
            try:
                tool = json.loads(schema)
            except (TypeError, ValueError) as e:
                raise InvalidRequestError(f"tool_schemas entries must be JSON texts: {e}", param="tool_schemas") from None
            tools.append(tool if isinstance(tool, dict) and "function" in tool else {"type": "function", "function": tool})
        return tools


def _dumps(body: Dict[str, Any]) -> str:
    try:
        return json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(
            f"the request must contain only JSON values (str, int, float, bool, None, list, dict): {e}",
            param="messages",
        ) from None


class ChatCompletionStream(Iterator[ChatCompletionChunkResponse]):
    """The chunks of a streamed request. Closing it (or dropping it, or leaving a ``with``
    block) cancels the generation."""

    def __init__(self, native: "_phive.ChatStream") -> None:
        self._native = native

    def __iter__(self) -> "ChatCompletionStream":
        return self

    def __next__(self) -> ChatCompletionChunkResponse:
        return chunk_from_dict(json.loads(next(self._native)))

    def close(self) -> None:
        """Cancels the request; iteration ends."""
        self._native.close()

    def __enter__(self) -> "ChatCompletionStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runner:
    """A loaded model (mistral.rs's ``Runner``).

    Loading happens in the constructor. ``max_seqs`` is how many sequences (choices of requests)
    the engine batches into each step (default 32; concurrent calls from several threads batch
    together); ``max_batched_tokens`` (phive) is the tokens fed per step (default 32: one per
    decoding sequence plus prefill chunks); ``solo_prefill_chunk`` (phive) is the most tokens per
    step of a prompt prefilling while nothing else runs (default 256; such a step is abandoned
    when a request arrives, so it stalls nobody; at most ``max_batched_tokens`` turns it off);
    ``kv_cache_mem`` (phive) is the KV cache in GiB
    (default: 40% of the memory available at start); ``media_cache_mem`` (phive) is the GiB of
    encoded images and audio kept across requests (default 0.5; 0 turns it off);
    ``no_prefix_cache`` (phive; or mistral.rs's ``prefix_cache_n=0``) stops reusing the KV of
    prompt prefixes seen before (exact either way; ``usage.prompt_tokens_details.cached_tokens``
    says how many prompt tokens were reused); ``kv_cache_dtype`` (phive) is ``"auto"`` (the default:
    f32 for an exact f32 model, f16 with ``in_situ_quant``, a GGUF checkpoint or a half ``dtype``),
    ``"f32"`` (exact) or ``"f16"`` (twice the tokens in the same memory, faster decoding over long
    contexts; each cached key and value keeps 11 significant bits); ``gpu_memory_utilization`` (phive; or
    mistral.rs's ``pa_gpu_mem_usage``) is, with ``device="cuda"``, the share of the GPU's memory
    phive may fill, the KV cache getting what the weights leave (default 0.9);
    ``max_queue`` (phive) bounds waiting requests; ``max_images`` (phive) bounds images per request. ``seed`` is used by
    requests that set none. ``in_situ_quant`` ("Q4K", "Q6K", "Q8_0", "BF16"... or a bit width
    such as "4") quantizes the language model's linear layers while loading; ``isq_encoders``
    (phive) quantizes the vision/audio encoders' projections too. ``num_crops`` (Phi-3.5-vision)
    and ``dynamic_hd`` (Phi-4-multimodal) (phive) replace the checkpoint's crop limit per image;
    a request may still set its own. ``device`` (phive) is ``"cpu"`` (the default) or
    ``"cuda"``/``"cuda:N"`` with a CUDA build of phive (``scripts/build-cuda.sh --python``).

    The GIL is released while loading and generating, so other Python threads keep running;
    Ctrl-C (``KeyboardInterrupt``) during a request cancels it and propagates.
    """

    def __init__(
        self,
        which: Which.VisionPlain,
        max_seqs: Optional[int] = None,
        no_kv_cache: bool = False,
        prefix_cache_n: Optional[int] = None,
        token_source: Optional[str] = None,
        speculative_gamma: Optional[int] = None,
        which_draft: Optional[Any] = None,
        chat_template: Optional[str] = None,
        num_device_layers: Optional[List[str]] = None,
        in_situ_quant: Optional[str] = None,
        anymoe_config: Optional[Any] = None,
        pa_gpu_mem: Optional[int] = None,
        pa_gpu_mem_usage: Optional[float] = None,
        pa_ctxt_len: Optional[int] = None,
        pa_blk_size: Optional[int] = None,
        pa_cache_type: Optional[Any] = None,
        no_paged_attn: bool = False,
        paged_attn: bool = False,
        prompt_batchsize: Optional[int] = None,
        seed: Optional[int] = None,
        enable_search: bool = False,
        search_bert_model: Optional[str] = None,
        no_bert_model: bool = False,
        jinja_explicit: Optional[str] = None,
        max_queue: Optional[int] = None,
        max_images: Optional[int] = None,
        isq_encoders: bool = False,
        max_batched_tokens: Optional[int] = None,
        solo_prefill_chunk: Optional[int] = None,
        kv_cache_mem: Optional[float] = None,
        media_cache_mem: Optional[float] = None,
        no_prefix_cache: bool = False,
        kv_cache_dtype: Optional[str] = None,
        gpu_memory_utilization: Optional[float] = None,
        num_crops: Optional[int] = None,
        dynamic_hd: Optional[int] = None,
        device: Optional[str] = None,
    ) -> None:
        if not isinstance(which, Which.VisionPlain):
            raise InvalidRequestError(
                f"which must be Which.VisionPlain(model_id=..., arch=...), got {which!r}; "
                "phive runs Phi-3.5-vision and Phi-4-multimodal checkpoints",
                param="which",
            )
        which._check()
        for name, value in (
            ("which_draft", which_draft),
            ("chat_template", chat_template),
            ("jinja_explicit", jinja_explicit),
            ("anymoe_config", anymoe_config),
            ("speculative_gamma", speculative_gamma),
            ("search_bert_model", search_bert_model),
        ):
            if value is not None:
                raise _unsupported(name, value)
        if enable_search:
            raise _unsupported("enable_search", True)
        if token_source not in (None, "cache", "none"):
            raise _unsupported("token_source", token_source, "set the HF_TOKEN environment variable instead")
        self._seed = seed
        self._native = _phive.NativeEngine(
            which.model_id,
            revision=which.revision,
            arch=_arch_value(which.arch),
            isq=in_situ_quant,
            isq_encoders=isq_encoders,
            device=device,
            dtype=_dtype_value(which.dtype),
            max_seqs=max_seqs,
            max_queue=max_queue,
            max_batched_tokens=max_batched_tokens,
            solo_prefill_chunk=solo_prefill_chunk,
            kv_cache_mem=kv_cache_mem,
            media_cache_mem=media_cache_mem,
            prefix_cache=not no_prefix_cache and prefix_cache_n != 0,
            kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=gpu_memory_utilization if gpu_memory_utilization is not None else pa_gpu_mem_usage,
            max_images=max_images,
            num_crops=num_crops,
            dynamic_hd=dynamic_hd,
        )

    def __repr__(self) -> str:
        return (
            f"Runner(model_id={self.model_id!r}, architecture={self.architecture.name}, "
            f"in_situ_quant={self.in_situ_quant!r}, max_seqs={self._native.max_seqs})"
        )

    @property
    def model_id(self) -> str:
        """Where the model came from (a folder, or ``org/name@revision``)."""
        return self._native.model_id

    @property
    def architecture(self) -> VisionArchitecture:
        """The checkpoint's architecture."""
        return VisionArchitecture(self._native.architecture)

    @property
    def in_situ_quant(self) -> Optional[str]:
        """The quantization type in effect ("Q4K"...), or ``None`` for unquantized weights."""
        return self._native.isq

    def max_sequence_length(self) -> int:
        """Longest sequence (prompt plus completion) the model accepts."""
        return self._native.context_length

    def stats(self) -> Dict[str, int]:
        """Engine state and counters since the runner started: ``queued`` and ``active``
        requests, ``cancelled`` requests, ``running_seqs`` and ``waiting_seqs``, ``preemptions``,
        ``steps`` (batched forward passes), ``interrupted_steps`` (solo prefill steps abandoned
        for a request that arrived), ``max_batch_size`` (upper bound of the largest step's
        sequence count), ``kv_blocks_used`` / ``kv_blocks_free``, ``media_cache_hits`` /
        ``media_cache_misses``."""
        return dict(self._native.stats())

    def send_chat_completion_request(
        self, request: ChatCompletionRequest
    ) -> Union[ChatCompletionResponse, ChatCompletionStream]:
        """Answers ``request``: a :class:`ChatCompletionResponse`, or with ``stream=True`` an
        iterator of :class:`ChatCompletionChunkResponse` whose last chunk has ``finish_reason``
        and ``usage``. Raises :class:`InvalidRequestError` (a ``ValueError``) for bad requests,
        :class:`MediaError` for images that cannot be loaded."""
        if not isinstance(request, ChatCompletionRequest):
            raise InvalidRequestError(
                f"expected a ChatCompletionRequest, got {type(request).__name__}", param="request"
            )
        body = _dumps(request._to_openai(self._seed))
        if request.stream:
            return ChatCompletionStream(self._native.chat_stream(body))
        return response_from_dict(json.loads(self._native.chat(body)))
