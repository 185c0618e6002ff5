"""phive: Phi-3.5-vision and Phi-4-multimodal inference, with mistral.rs's Python API.

    from phive import Runner, Which, ChatCompletionRequest, VisionArchitecture

    runner = Runner(which=Which.VisionPlain(model_id="microsoft/Phi-3.5-vision-instruct",
                                            arch=VisionArchitecture.Phi3V))
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        model="default",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "picture.jpg"}},
            {"type": "text", "text": "What is shown in this image?"}]}],
        max_tokens=256))
    print(res.choices[0].message.content)
    print(res.usage)

Errors raise subclasses of :class:`PhiveError` (invalid requests are also ``ValueError``s);
see :mod:`phive._errors` for the hierarchy.
"""

from ._errors import (
    EngineBusyError,
    InternalError,
    InvalidRequestError,
    MediaError,
    ModelLoadError,
    ModelNotFoundError,
    PhiveError,
    UnsupportedArchitectureError,
)
from ._phive import __version__
from ._responses import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    ToolCall,
    Logprobs,
    PromptTokensDetails,
    ResponseLogprob,
    ResponseMessage,
    Timings,
    TopLogprob,
    Usage,
)
from ._runner import (
    ChatCompletionRequest,
    ChatCompletionStream,
    MultimodalArchitecture,
    Runner,
    VisionArchitecture,
    Which,
)

__all__ = [
    "__version__",
    "Runner",
    "Which",
    "VisionArchitecture",
    "MultimodalArchitecture",
    "ChatCompletionRequest",
    "ChatCompletionStream",
    "ChatCompletionResponse",
    "ChatCompletionChunkResponse",
    "Choice",
    "ChunkChoice",
    "Delta",
    "FunctionCall",
    "ToolCall",
    "Logprobs",
    "PromptTokensDetails",
    "ResponseLogprob",
    "ResponseMessage",
    "Timings",
    "TopLogprob",
    "Usage",
    "PhiveError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
    "InvalidRequestError",
    "MediaError",
    "EngineBusyError",
    "InternalError",
]
