"""The HTTP layer: one router per resource, pydantic request/response models, and the one
mapping from `SwitchyardError` to HTTP. It writes to the store and never runs jobs."""
