"""The Responses API as Chat Completions: a request's items become chat messages, and a whole chat
completion becomes a Response object (its chunks become events in responses_events.py).

A translated request runs on the chat service's metered path (admission, reservation, settlement,
the usage log), so a Responses request costs what the same chat request costs.
"""

import time
import uuid
from typing import Any

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.messages import (
    AssistantMessage,
    ChatMessage,
    DeveloperMessage,
    ImagePart,
    ImageURL,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from chatgate.protocol.messages import (
    FunctionCall as ChatFunctionCall,
)
from chatgate.protocol.requests import (
    FunctionDefinition,
    FunctionTool,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    StreamOptions,
)
from chatgate.protocol.responses import Annotation, ChatCompletion, FinishReason
from chatgate.protocol.responses_api import (
    BuiltinTool,
    ChatRequestFromResponses,
    CreateResponse,
    FormatJsonObject,
    FormatJsonSchema,
    FunctionCall,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputFile,
    InputImage,
    InputItem,
    InputMessage,
    InputText,
    ItemReference,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningItem,
    Refusal,
    Response,
    ResponseUsage,
)
from chatgate.providers.images.prepare import has_images


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- request: items to chat messages -----------------------------------------------------------


def _text_only(content: str | list[Any], param: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, InputText | OutputText):
            texts.append(part.text)
        elif isinstance(part, Refusal):
            texts.append(part.refusal)
        else:
            raise InvalidRequest(
                f"A message with this role holds text only, not '{part.type}'.", param=f"{param}[{j}].type"
            )
    return "".join(texts)


def _user_content(content: str | list[Any], param: str) -> str | list[TextPart | ImagePart]:
    if isinstance(content, str):
        return content
    parts: list[TextPart | ImagePart] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if isinstance(part, InputText | OutputText):
            parts.append(TextPart(type="text", text=part.text))
        elif isinstance(part, InputImage):
            if part.image_url is None:
                raise NotImplementedFeature(
                    "Images are given by image_url here (a URL, a data URL, or a link from POST /v1/files), "
                    "not by file_id.",
                    param=f"{where}.file_id",
                )
            parts.append(
                ImagePart(type="image_url", image_url=ImageURL(url=part.image_url, detail=part.detail))
            )
        elif isinstance(part, InputFile):
            raise NotImplementedFeature("File inputs are not supported on this gateway.", param=where)
        else:
            parts.append(TextPart(type="text", text=part.refusal))
    return parts


def _tool_output(output: str | list[Any], param: str) -> str:
    if isinstance(output, str):
        return output
    return _text_only(output, param)


def chat_messages(
    items: list[InputItem], instructions: str | None, *, param: str = "input"
) -> list[ChatMessage]:
    """The conversation as chat messages: instructions first, then every item in order.

    A function call joins the assistant message just before it (a chat message carries its calls);
    reasoning items are dropped, as Chat Completions has no place for them.
    """
    messages: list[ChatMessage] = []
    if instructions:
        messages.append(SystemMessage(role="system", content=instructions))
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if isinstance(item, InputMessage):
            if item.role == "user":
                messages.append(
                    UserMessage(role="user", content=_user_content(item.content, f"{where}.content"))
                )
            elif item.role == "assistant":
                text = _text_only(item.content, f"{where}.content")
                messages.append(AssistantMessage(role="assistant", content=text))
            elif item.role == "system":
                messages.append(
                    SystemMessage(role="system", content=_text_only(item.content, f"{where}.content"))
                )
            else:
                messages.append(
                    DeveloperMessage(role="developer", content=_text_only(item.content, f"{where}.content"))
                )
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(
                id=item.call_id, function=ChatFunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage) and last.function_call is None:
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(AssistantMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            output = _tool_output(item.output, f"{where}.output")
            messages.append(ToolMessage(role="tool", content=output, tool_call_id=item.call_id))
        elif isinstance(item, ItemReference):
            raise NotImplementedFeature(
                "Item references are not supported: send the item itself, or use previous_response_id.",
                param=where,
            )
        else:
            assert isinstance(item, ReasoningItem)
    return messages


def _response_format(request: CreateResponse) -> ResponseFormat | None:
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, FormatJsonObject):
        return JsonObjectFormat(type="json_object")
    if isinstance(fmt, FormatJsonSchema):
        schema = JsonSchemaFormat.model_validate(
            {"name": fmt.name, "description": fmt.description, "schema": fmt.schema_, "strict": fmt.strict}
        )
        return JsonSchemaResponseFormat(type="json_schema", json_schema=schema)
    return None


def refuse_unsupported(request: CreateResponse) -> None:
    """What no deployment of this gateway can do for a Responses request: a 400 naming it."""
    refused: list[tuple[str, bool, str]] = [
        ("background", bool(request.background), "Background responses are not supported."),
        (
            "conversation",
            request.conversation is not None,
            "Conversations are not supported: use previous_response_id.",
        ),
        ("prompt", request.prompt is not None, "Stored prompts are not supported."),
        (
            "top_logprobs",
            bool(request.top_logprobs),
            "Log probabilities are not supported on the Responses API here.",
        ),
    ]
    for param, used, message in refused:
        if used:
            raise NotImplementedFeature(message, param=param)
    for i, tool in enumerate(request.tools or []):
        if isinstance(tool, BuiltinTool):
            raise NotImplementedFeature(
                f"The built-in tool '{tool.type}' is not available on this gateway; function tools are.",
                param=f"tools[{i}].type",
            )
    if request.previous_response_id is not None and request.conversation is not None:
        raise InvalidRequest(
            "Use previous_response_id or conversation, not both.", param="previous_response_id"
        )


def to_chat(request: CreateResponse, context: list[InputItem], *, stream: bool) -> ChatRequestFromResponses:
    """The chat request that answers a Responses request, whose conversation so far is ``context``
    (the earlier items of a previous_response_id chain, then this request's input)."""
    refuse_unsupported(request)
    tools = [
        FunctionTool(
            type="function",
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict
            ),
        )
        for tool in request.tools or []
        if not isinstance(tool, BuiltinTool)
    ]
    choice = request.tool_choice
    tool_choice = (
        NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
        if choice is not None and not isinstance(choice, str)
        else choice
    )
    messages = chat_messages(context, request.instructions)
    if not messages:
        raise InvalidRequest("The input is empty: give at least one message.", param="input")
    chat = ChatRequestFromResponses(
        model=request.model,
        messages=messages,
        max_completion_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        tools=tools or None,
        tool_choice=tool_choice if tools else None,
        parallel_tool_calls=request.parallel_tool_calls if tools else None,
        response_format=_response_format(request),
        reasoning_effort=request.reasoning.effort if request.reasoning is not None else None,
        user=request.safety_identifier or request.user,
        seed=request.seed,
        stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,
    )
    if has_images(chat):
        return chat  # images are checked and inlined by the gateway: only a translation carries them
    return chat.carrying(native_body(request, context))


def native_body(request: CreateResponse, context: list[InputItem]) -> dict[str, Any]:
    """The request as relayed to a deployment that speaks the Responses API itself: the whole
    conversation in ``input`` (chains are resolved here), nothing stored upstream."""
    body = request.model_dump(mode="json", exclude_none=True, by_alias=True)
    for local in ("previous_response_id", "store", "stream", "stream_options", "metadata", "seed"):
        body.pop(local, None)
    body["input"] = [item.model_dump(mode="json", exclude_none=True, by_alias=True) for item in context]
    body["store"] = False
    return body


# ---- answer: a chat completion as a Response ----------------------------------------------------


def _annotations(annotations: list[Annotation] | None) -> list[dict[str, Any]]:
    return [
        {
            "type": "url_citation",
            "start_index": a.url_citation.start_index,
            "end_index": a.url_citation.end_index,
            "url": a.url_citation.url,
            "title": a.url_citation.title,
        }
        for a in annotations or []
    ]


def status_of(reason: FinishReason | None) -> tuple[str, IncompleteDetails | None]:
    if reason == "length":
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    if reason == "content_filter":
        return "incomplete", IncompleteDetails(reason="content_filter")
    return "completed", None


def usage_of(prompt_tokens: int, completion_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def shell(request: CreateResponse, model: str, response_id: str, created: int) -> Response:
    """The Response as it stands before any output: the request's settings echoed."""
    # Echoed as the schema's FunctionTool has them: parameters and strict always present, maybe null.
    tools = [t.model_dump(mode="json", exclude_none=False) for t in request.tools or []]
    choice = request.tool_choice
    return Response(
        id=response_id,
        created_at=created,
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        model=model,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        store=request.store is not False,
        temperature=request.temperature if request.temperature is not None else 1.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        text=request.text.model_dump(mode="json", exclude_none=True, by_alias=True)
        if request.text is not None and request.text.format is not None
        else {"format": {"type": "text"}},
        tool_choice=choice.model_dump(mode="json")
        if choice is not None and not isinstance(choice, str)
        else (choice or "auto"),
        tools=tools,
        truncation=request.truncation or "disabled",
        user=request.user,
        metadata=request.metadata or {},
    )


def from_completion(
    request: CreateResponse, completion: ChatCompletion, response_id: str, created: int
) -> Response:
    response = shell(request, completion.model, response_id, created)
    choice = completion.choices[0]
    message = choice.message
    output: list[OutputItem] = []
    reason = choice.finish_reason
    status, incomplete = status_of(reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    if message.content or message.refusal or not message.tool_calls:
        content: list[OutputText | Refusal] = []
        if message.refusal:
            content.append(Refusal(refusal=message.refusal))
        if message.content or not content:
            content.append(
                OutputText(text=message.content or "", annotations=_annotations(message.annotations))
            )
        output.append(OutputMessage(id=new_id("msg"), content=content, status=item_status))
    for call in message.tool_calls or []:
        output.append(
            FunctionCall(
                id=new_id("fc"),
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
                status="completed",
            )
        )
    usage = completion.usage
    return response.model_copy(
        update={
            "status": status,
            "incomplete_details": incomplete,
            "completed_at": int(time.time()) if status == "completed" else None,
            "output": output,
            "usage": usage_of(usage.prompt_tokens, usage.completion_tokens) if usage else None,
        }
    )
