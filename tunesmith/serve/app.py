"""The HTTP API (FastAPI): classify, generate, OpenAI-compatible chat completions, models, health, metrics.

Every request: checked (Guard: key, body size, slow body; pydantic: types; here: the configurable
bounds) -> routed (a model name, or an A/B route picking an arm by a stable hash of the user) ->
queued on that model's batcher (503 + Retry-After when full) -> answered within the timeout (else
504) -> counted (/metrics) and logged (the prediction log, off the request path) -> handed to the
answering model's shadows, if any (shadow.py: logged only, never awaited by the request).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import TunesmithError
from .batching import Batcher, Busy, Job
from .guard import ApiError, Guard
from .images import decode_images
from .options import ServeOptions
from .pool import Served
from .predlog import PredictionLog
from .schemas import ChatRequest, ClassifyRequest, GenerateRequest
from .shadow import Shadows, answers
from .telemetry import Telemetry
from .workers import Sampling, classify_worker, generate_worker

WORKERS = {"classify": classify_worker, "generate": generate_worker}


class Serving:
    """The models, their batchers, the limits, the log and the counters of one server."""

    def __init__(self, models: dict[str, Served], options: ServeOptions, log: PredictionLog | None):
        self.models, self.options, self.log = models, options, log
        self.telemetry = Telemetry()
        self.shadows = Shadows(self, options.shadows)
        self.routes = {r.name: r for r in options.routes}
        batch, wait = (options.max_batch, options.max_wait_ms / 1000) if options.batching else (1, 0.0)
        self.batchers: dict[tuple[str, str], Batcher] = {}
        for name, served in models.items():
            for kind, worker in WORKERS.items():
                if kind in served.serves:
                    hist = self.telemetry.batch.labels(name)
                    self.batchers[name, kind] = Batcher(
                        f"{name}/{kind}",
                        worker(served, options.max_total_tokens),
                        batch,
                        wait,
                        options.queue_size,
                        hist.observe,
                    )

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close(self.options.timeout_s)
        if self.log is not None:
            self.log.close()

    def pick(self, request: Request, name: str, kind: str, user: str | None) -> Served:
        """The model answering a request for `name` (an A/B route picks its arm); recorded on request.state."""
        state = request.state
        route = self.routes.get(name)
        if route is not None:
            state.route, state.arm = name, route.pick(user or state.request_id)
            name = state.arm
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted([*self.models, *self.routes]))
            raise ApiError(404, f"model '{name}' is not served here (served: {known})", "model", "not_found")
        if kind not in served.serves:
            offers = ", ".join(sorted(served.serves))
            raise ApiError(400, f"model '{name}' does not {kind} (it offers: {offers})", "model", "wrong_model")
        state.model, state.served = name, served
        return served

    async def submit(self, served: Served, kind: str, job: Job):
        try:
            return await self.batchers[served.name, kind].submit(job, self.options.timeout_s)
        except Busy:
            raise self.busy(served) from None
        except TimeoutError:
            raise ApiError(504, f"no answer within {self.options.timeout_s:g}s", kind="timeout") from None
        except TunesmithError as err:
            raise ApiError(400, str(err), kind="model_error") from None

    def busy(self, served: Served) -> ApiError:
        return ApiError(503, f"model '{served.name}' is busy; retry shortly", kind="busy", headers={"Retry-After": "1"})

    def record(self, request: Request, endpoint: str, inputs, outputs, status: int = 200) -> None:
        """One prediction-log record (queued; written by the log's own thread)."""
        if self.log is None:
            return
        state = request.state
        served = getattr(state, "served", None)
        self.log.write(
            {
                "time": time.time(),
                "request_id": state.request_id,
                "endpoint": endpoint,
                "model": getattr(state, "model", None),
                "version": served.version if served else None,
                "route": getattr(state, "route", None),
                "arm": getattr(state, "arm", None),
                "inputs": inputs,
                "outputs": outputs,
                "latency_ms": round((time.perf_counter() - state.t0) * 1000, 2),
                "status": status,
            }
        )

    # ---- the configurable bounds
    def classify_inputs(self, req: ClassifyRequest) -> tuple[str, list[str], str]:
        """(input kind "text" | "image", the items, the field they came in) of a classify request."""
        given = [f for f in ("texts", "text", "images", "image") if getattr(req, f) is not None]
        if len(given) != 1:
            raise ApiError(
                422,
                "give exactly one of 'texts' (a list) or 'text' (a string); an image model takes 'images' (a list "
                "of base64-encoded image files) or 'image'",
                given[0] if given else "text",
            )
        if given[0] in ("texts", "text"):
            return "text", self.items(req.texts, req.text, "text"), given[0]
        items = [req.image] if req.image is not None else req.images
        if not items:
            raise ApiError(422, "'images' is empty", "images")
        if len(items) > self.options.max_texts:
            raise ApiError(422, f"{len(items)} images; at most {self.options.max_texts} per request", "images")
        return "image", items, given[0]

    def check_task(self, served: Served, task: str | None) -> str | None:
        """A multi-task model's head (`task`); a 422 naming the tasks when it has none of that name."""
        heads = getattr(served.run.predictor, "heads", None)
        if task is None:
            return None
        if heads is None:
            raise ApiError(422, f"'task' picks a head of a multi-task model; model '{served.name}' has one", "task")
        names = [h.name for h in heads]
        if task not in names:
            raise ApiError(422, f"model '{served.name}' has no task '{task}'; its tasks: {', '.join(names)}", "task")
        return task

    def check_input(self, served: Served, kind: str, field: str) -> None:
        """Texts to an image model, or images to a text model: one line saying what the model takes."""
        wants = served.run.predictor.input_kind
        if kind == wants:
            return
        takes = (
            "'images' (a list of base64-encoded image files) or 'image'" if wants == "image" else "'texts' or 'text'"
        )
        raise ApiError(
            422, f"model '{served.name}' classifies {wants}s: send {takes}, not '{field}'", field, "wrong_input"
        )

    def items(self, many: list[str] | None, one: str | None, field: str) -> list[str]:
        if (many is None) == (one is None):
            raise ApiError(422, f"give exactly one of '{field}s' (a list) or '{field}' (a string)", field)
        items = [one] if one is not None else many
        if not items:
            raise ApiError(422, f"'{field}s' is empty", f"{field}s")
        if len(items) > self.options.max_texts:
            raise ApiError(422, f"{len(items)} {field}s; at most {self.options.max_texts} per request", f"{field}s")
        self.bound_chars(items, f"{field}s" if many is not None else field)
        return items

    def bound_chars(self, items: list[str], field: str) -> None:
        for i, text in enumerate(items):
            if len(text) > self.options.max_text_chars:
                raise ApiError(
                    422, f"{len(text):,} characters; at most {self.options.max_text_chars:,}", f"{field}[{i}]"
                )

    def sampling(self, served: Served, max_tokens, temperature, top_p) -> Sampling:
        """The request's generation settings; the prompt-token bound is checked by the worker (it tokenizes)."""
        limit = self.options.max_tokens
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(422, f"max_tokens {max_tokens} is above this server's limit of {limit}", "max_tokens")
        return Sampling(max_tokens or min(served.run.config.generate.max_new_tokens, limit), temperature, top_p)


def build_app(models: dict[str, Served], options: ServeOptions, log: PredictionLog | None = None):
    """The ASGI app: FastAPI inside the Guard. `app.state.serving` (inner app) holds the batchers."""
    serving = Serving(models, options, log)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await serving.shadows.drain(options.timeout_s)  # shadow answers still on their way reach the log
        await asyncio.get_running_loop().run_in_executor(None, serving.close)  # drain the queues, flush the log

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = serving
    add_error_handlers(app, serving)
    add_routes(app, serving)
    guard = Guard(app, options, lambda path, status, kind: serving.telemetry.observe(path, "", status, None, kind))
    guard.serving = serving
    return guard


def add_error_handlers(app: FastAPI, serving: Serving) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        request.state.error = err.kind
        if getattr(request.state, "served", None) is not None:
            serving.record(request, request.url.path, getattr(request.state, "inputs", None), None, err.status)
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        request.state.error = "bad_json" if first.get("type") == "json_invalid" else "invalid_request"
        if first.get("type") == "json_invalid":
            return JSONResponse(
                ApiError(400, f"the body is not valid JSON ({first.get('msg')})", kind="bad_json").body(), 400
            )
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(422, first.get("msg", "invalid value"), field).body(), 422)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(err).__name__}", kind="internal").body(), 500)


def add_routes(app: FastAPI, serving: Serving) -> None:
    @app.middleware("http")
    async def stamp(request: Request, call_next):
        request.state.t0 = time.perf_counter()
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["x-request-id"] = request.state.request_id
        served = getattr(request.state, "served", None)
        if served is not None:
            response.headers["x-tunesmith-model"] = f"{served.name}@{served.version}"
        serving.telemetry.observe(
            request.url.path,
            getattr(request.state, "model", ""),
            response.status_code,
            time.perf_counter() - request.state.t0,
            getattr(request.state, "error", None) or ("internal" if response.status_code >= 500 else None),
        )
        return response

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": sorted(serving.models), "routes": sorted(serving.routes)}

    @app.get("/metrics")
    async def metrics():
        depths = {f"{name}/{kind}": b.depth() for (name, kind), b in serving.batchers.items()}
        return Response(serving.telemetry.render(depths), media_type=serving.telemetry.content_type)

    @app.get("/v1/models")
    async def list_models():
        routes = [{"id": r.name, "object": "route", "arms": dict(r.arms)} for r in serving.routes.values()]
        return {"object": "list", "data": [s.describe() for s in serving.models.values()] + routes}

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest, request: Request, task: str | None = None):
        kind, items, field = serving.classify_inputs(req)
        request.state.inputs = items if kind == "text" else [{"images": len(items)}]
        served = serving.pick(request, req.model, "classify", req.user)
        serving.check_input(served, kind, field)
        head = serving.check_task(served, req.task or task)
        if kind == "image":  # decoded off the event loop; a bad image is a 422 before any model work
            images = served.run.config.images
            loop = asyncio.get_running_loop()
            items, request.state.inputs = await loop.run_in_executor(None, decode_images, items, field, images)
        predictions = await serving.submit(served, "classify", Job(items, len(items), key=head))
        results = answers("classify", predictions)
        serving.record(request, "classify", request.state.inputs, results)
        serving.shadows.follow(request, "classify", lambda c: Job(items, len(items), key=serving.check_task(c, head)))
        return {**answer_head(request, served), "results": results}

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest, request: Request):
        prompts = serving.items(req.prompts, req.prompt, "prompt")
        request.state.inputs = prompts
        served = serving.pick(request, req.model, "generate", req.user)
        sampling = serving.sampling(served, req.max_tokens, req.temperature, req.top_p)
        done = await serving.submit(served, "generate", Job(prompts, len(prompts), key=sampling))
        texts = answers("generate", done)
        serving.record(request, "generate", prompts, texts)
        serving.shadows.follow(request, "generate", lambda c: Job(prompts, len(prompts), key=sampling))
        return {**answer_head(request, served), "completions": texts, "usage": usage(done)}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        messages = [m.model_dump() for m in req.messages]
        serving.bound_chars(["".join(m["content"] for m in messages)], "messages")
        request.state.inputs = messages
        served = serving.pick(request, req.model, "chat", req.user)
        sampling = serving.sampling(served, req.max_completion_tokens or req.max_tokens, req.temperature, req.top_p)
        if req.stream:
            return await stream_chat(serving, request, served, messages, sampling)
        [done] = await serving.submit(served, "generate", Job([messages], 1, key=sampling))
        serving.record(request, "chat", messages, [done.text])
        serving.shadows.follow(request, "chat", lambda c: Job([messages], 1, key=sampling))
        return {
            **chat_head(request, served, "chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text},
                    "finish_reason": done.finish_reason(sampling.max_tokens),
                }
            ],
            "usage": usage([done]),
        }


def answer_head(request: Request, served: Served) -> dict:
    state = request.state
    head = {"id": state.request_id, "model": served.name, "version": served.version}
    if getattr(state, "route", None):
        head.update(route=state.route, arm=state.arm)
    return head


def chat_head(request: Request, served: Served, kind: str) -> dict:
    return {
        **answer_head(request, served),
        "id": f"chatcmpl-{request.state.request_id}",
        "object": kind,
        "created": int(time.time()),
    }


def usage(done: list) -> dict:
    prompt, completion = sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def stream_chat(serving: Serving, request: Request, served: Served, messages: list, sampling: Sampling):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.

    The stream starts once the worker has accepted the prompt, so a refusal (too long, busy) is still an
    HTTP status; an error after that (a timeout) is an `error` event."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    started = asyncio.Event()
    on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    job = Job(([messages], on_text, lambda: loop.call_soon_threadsafe(started.set)), 1, key=sampling, alone=True)
    batcher = serving.batchers[served.name, "generate"]
    try:
        batcher.enqueue(job)
    except Busy:
        raise serving.busy(served) from None
    done = asyncio.ensure_future(batcher.wait(job, serving.options.timeout_s))
    began = asyncio.ensure_future(started.wait())
    await asyncio.wait({done, began}, return_when=asyncio.FIRST_COMPLETED)
    if not began.done():
        began.cancel()
        try:
            done.result()  # the worker refused the prompt (or the wait timed out) before any text
        except TimeoutError:
            raise ApiError(504, f"no answer within {serving.options.timeout_s:g}s", kind="timeout") from None
    head = chat_head(request, served, "chat.completion.chunk")

    def event(delta: dict, reason: str | None = None) -> str:
        return f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': reason}]})}\n\n"

    async def events():
        yield event({"role": "assistant", "content": ""})
        while True:
            piece = asyncio.ensure_future(pieces.get())
            finished, _ = await asyncio.wait({piece, done}, return_when=asyncio.FIRST_COMPLETED)
            if piece in finished:
                yield event({"content": piece.result()})
                continue
            piece.cancel()
            break
        while not pieces.empty():
            yield event({"content": pieces.get_nowait()})
        try:
            [completion] = done.result()
        except (TimeoutError, TunesmithError, ApiError) as err:
            if not isinstance(err, ApiError):
                err = ApiError(504, f"no answer within {serving.options.timeout_s:g}s", kind="timeout")
            yield f"data: {json.dumps(err.body())}\n\n"
            return
        yield event({}, completion.finish_reason(sampling.max_tokens))
        yield "data: [DONE]\n\n"
        serving.record(request, "chat", messages, [completion.text])
        serving.shadows.follow(request, "chat", lambda c: Job([messages], 1, key=sampling))

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
