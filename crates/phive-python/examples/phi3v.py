# mistral.rs's examples/python/phi3v.py with the import line changed. The model and the image
# can be overridden with PHIVE_MODEL / PHIVE_IMAGE_URL (the tests point them at tiny fixtures).
import os

from phive import Runner, Which, ChatCompletionRequest, VisionArchitecture

MODEL_ID = os.environ.get("PHIVE_MODEL", "microsoft/Phi-3.5-vision-instruct")
IMAGE_URL = os.environ.get(
    "PHIVE_IMAGE_URL",
    "https://www.nhmagazine.com/content/uploads/2019/05/mtwashingtonFranconia-2-19-18-108-Edit-Edit.jpg",
)

runner = Runner(
    which=Which.VisionPlain(
        model_id=MODEL_ID,
        arch=VisionArchitecture.Phi3V,
    ),
)

res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="default",
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": IMAGE_URL
                        },
                    },
                    {
                        "type": "text",
                        "text": "<|image_1|>\nWhat is shown in this image? Write a detailed response analyzing the scene.",
                    },
                ],
            }
        ],
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].message.content)
print(res.usage)
