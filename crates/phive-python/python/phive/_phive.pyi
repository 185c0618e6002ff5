"""Type stubs of the native module ``phive._phive`` (use the classes in ``phive`` instead)."""

from typing import Dict, Iterator, Optional

__version__: str

class NativeEngine:
    """A loaded model served by phive's engine."""

    def __init__(
        self,
        model: str,
        *,
        revision: Optional[str] = None,
        arch: Optional[str] = None,
        isq: Optional[str] = None,
        isq_encoders: bool = False,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        max_seqs: Optional[int] = None,
        max_queue: Optional[int] = None,
        max_batched_tokens: Optional[int] = None,
        solo_prefill_chunk: Optional[int] = None,
        kv_cache_mem: Optional[float] = None,
        media_cache_mem: Optional[float] = None,
        prefix_cache: bool = True,
        kv_cache_dtype: Optional[str] = None,
        gpu_memory_utilization: Optional[float] = None,
        max_images: Optional[int] = None,
        num_crops: Optional[int] = None,
        dynamic_hd: Optional[int] = None,
    ) -> None: ...
    @property
    def model_id(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def isq(self) -> Optional[str]: ...
    @property
    def max_seqs(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    def stats(self) -> Dict[str, int]: ...
    def chat(self, request: str) -> str:
        """OpenAI chat request JSON in, ``chat.completion`` JSON out."""
    def chat_stream(self, request: str) -> "ChatStream":
        """OpenAI chat request JSON in, an iterator of ``chat.completion.chunk`` JSON out."""

class ChatStream(Iterator[str]):
    """Chunks of a streamed request; closing or dropping it cancels the request."""

    def __iter__(self) -> "ChatStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
