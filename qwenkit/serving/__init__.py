"""The kit's own OpenAI-compatible server core: one model, N sequence slots, continuous
batching. `ServedModel` (model + context with N sequences + chat template), `Scheduler`
(the decode loop, knows nothing of HTTP), `create_app` (the HTTP contract)."""
from qwenkit.serving.app import MAX_BODY_BYTES, AppState, BodyLimit, create_app
from qwenkit.serving.model import ServedModel
from qwenkit.serving.sampling import SamplingParams
from qwenkit.serving.scheduler import QueueFull, Request, Result, Scheduler, SchedulerError

__all__ = ["AppState", "BodyLimit", "MAX_BODY_BYTES", "QueueFull", "Request", "Result", "SamplingParams",
           "Scheduler", "SchedulerError", "ServedModel", "create_app"]
