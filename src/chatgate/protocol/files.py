"""Uploaded files (``POST /v1/files``): OpenAI's file object, with the URL to refer to it by."""

from typing import Literal

from pydantic import ConfigDict, Field

from chatgate.protocol.base import WireModel


class FileObject(WireModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    url: str = Field(
        description='Where the file is served; use it in an `{"type": "image_url", "image_url": {"url": ...}}` part.'
    )


class FileList(WireModel):
    """The caller's uploads, oldest first, and what they hold of the caller's storage quota."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    bytes: int = Field(description="What the caller's uploads hold together.")
    quota_bytes: int = Field(description="What they may hold; a new upload removes the oldest to fit.")


class DeletedFile(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileUpload(WireModel):
    """The multipart form of an upload, as the SDK's ``files.create`` sends it."""

    model_config = ConfigDict(extra="allow")  # other form fields are ignored

    file: bytes = Field(description="The image: PNG, JPEG, GIF or WebP.")
    purpose: str = "vision"
