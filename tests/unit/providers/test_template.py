import pytest
from pydantic import TypeAdapter

from chatgate.errors import NotImplementedFeature
from chatgate.protocol.messages import ChatMessage
from chatgate.providers.local.template import ChatTemplate

messages_adapter = TypeAdapter(list[ChatMessage])


def conversation(*raw: dict[str, object]) -> list[ChatMessage]:
    return messages_adapter.validate_python(list(raw))


def test_fallback_chatml_renders_roles_and_generation_prompt() -> None:
    template = ChatTemplate(None, bos_token="", eos_token="")
    prompt = template.render(
        conversation({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    )
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_text_parts_are_joined_and_developer_is_a_system_message() -> None:
    template = ChatTemplate(None, bos_token="", eos_token="")
    prompt = template.render(
        conversation(
            {"role": "developer", "content": [{"type": "text", "text": "Rule."}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        )
    )
    assert "<|im_start|>system\nRule.<|im_end|>" in prompt
    assert "<|im_start|>user\nab<|im_end|>" in prompt


def test_image_parts_are_refused_not_dropped() -> None:
    template = ChatTemplate(None, bos_token="", eos_token="")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(NotImplementedFeature):
        template.render(conversation({"role": "user", "content": [image]}))
