"""Switchyard's built-in job handlers. Importing this package registers all of them.

Each submodule owns one engine and registers its operations with `@handler` on import:

- `handlers.general`: `general.echo`, `noop`, `sleep`, `fail`, `http_request`
- `handlers.text_intelligence`: `text_intelligence.analyze`, `summarize`
- `handlers.image_generation`: `image_generation.render`, `resize`
- `handlers.llm`: `llm.chat`, an OpenAI-compatible chat-completions call (docs/llm.md)
- `handlers.content`: `content.outline`, `assemble`, the document steps of a content
  pipeline (docs/pipelines.md)

In a workflow they compose: an image or text handler without its input in its own parameters
takes it from its parents' results (`handlers.inputs`, documented in docs/workflows.md).

Handlers use only the public API in `app` (`handler`, `JobContext`, `Retry`, `PermanentError`,
`get_settings`); they never touch the store.
"""

from handlers import content, general, image_generation, llm, text_intelligence

__all__ = ["content", "general", "image_generation", "llm", "text_intelligence"]
