"""Request bodies. Types are checked by pydantic (a wrong type is a 422 naming the field); the configurable
bounds (texts or images per request, characters, tokens) are checked by the app against `ServeOptions`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyRequest(Strict):
    """Texts for a text classifier; for an image classifier `images` / `image`: each a base64-encoded image file
    (PNG, JPEG, ...; a `data:image/png;base64,` prefix is accepted). Exactly one of the four."""

    model: str
    texts: list[str] | None = None
    text: str | None = None
    images: list[str] | None = None
    image: str | None = None
    task: str | None = None
    """A multi-task model: the task whose head answers (also `?task=`; default: its first primary task)."""
    user: str | None = None
    """Who asks: the key of A/B routing (else the request id)."""


class GenerateRequest(Strict):
    model: str
    prompts: list[str] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """OpenAI's chat.completions body; fields tunesmith does not use (n=1, stop, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    user: str | None = None
