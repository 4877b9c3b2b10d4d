"""Processes and the transactional list API in the Anaplan simulator (specs/anaplan.md §4 P1–P3,
§12 "Processes"; the addendum's list-items API).

A process runs its imports in order on the files they read (non-atomic: a step that fails stops
the process; earlier steps stay applied), and its task's ``result.nestedResults`` carries each
step's result; a step's failure dump is at ``…/processes/P/tasks/T/dumps/{importId}/chunks``.
Lists hold items (id, name, code, parent, properties); ``POST …/items?action=add`` and ``PUT
…/items`` take up to 100,000 items and answer with counts and per-item ``failures``; only a
workspace administrator may call them (others get 403).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from gateway.integrations.anaplan.simulator.app import AnaplanSimulator

MAX_ITEMS = 100_000


class SimProcess(BaseModel):
    id: str
    name: str
    actions: list[str]  # import ids, run in this order


class SimList(BaseModel):
    id: str
    name: str
    properties: list[str] = Field(default_factory=list)


@dataclass
class ListState:
    spec: SimList
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> item
    next_id: int = 206_000_000_001

    def by_code(self) -> dict[str, dict[str, Any]]:
        return {i["code"]: i for i in self.items.values() if i.get("code")}


@dataclass
class Actions:
    """What the simulator keeps for processes and lists (per model)."""

    processes: dict[str, dict[str, SimProcess]] = field(default_factory=dict)
    lists: dict[str, dict[str, ListState]] = field(default_factory=dict)
    process_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    non_admins: set[str] = field(default_factory=set)  # users who are not workspace administrators


def actions(sim: AnaplanSimulator) -> Actions:
    if not hasattr(sim, "_actions"):
        sim._actions = Actions()  # type: ignore[attr-defined]
    return sim._actions  # type: ignore[attr-defined]


def add_process(sim: AnaplanSimulator, model_id: str, process: SimProcess) -> None:
    actions(sim).processes.setdefault(model_id, {})[process.id] = process


def add_list(sim: AnaplanSimulator, model_id: str, spec: SimList, items: list[dict[str, Any]] = ()) -> ListState:
    state = ListState(spec)
    for item in items:
        _store(state, item)
    actions(sim).lists.setdefault(model_id, {})[spec.id] = state
    return state


def _store(state: ListState, item: dict[str, Any]) -> dict[str, Any]:
    iid = str(state.next_id)
    state.next_id += 1
    stored = {"id": iid, "name": item["name"], "code": item.get("code") or "", "parent": item.get("parent") or "",
              "properties": dict(item.get("properties") or {})}
    state.items[iid] = stored
    return stored


def _envelope(key: str | None = None, payload: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"meta": {"schema": ""}, "status": {"code": 200, "message": "Success"}, **extra}
    if key is not None:
        body[key] = payload
    return body


def actions_router(sim: AnaplanSimulator) -> APIRouter:
    """Routes below ``/2/0/[workspaces/W/]models/M`` (the caller mounts them like the imports')."""
    from gateway.integrations.anaplan.simulator.app import TaskOutcome, _api_error, _hex32, _Task

    router = APIRouter()

    async def who(request: Request) -> str:
        await sim._gate(request)
        return sim._principal(request)

    def processes_of(model_id: str, request: Request) -> dict[str, SimProcess]:
        sim._model(request.path_params.get("workspace_id"), model_id, request)
        return actions(sim).processes.get(model_id, {})

    @router.get("/processes")
    async def list_processes(model_id: str, request: Request) -> Response:
        await who(request)
        items = [{"id": p.id, "name": p.name} for p in processes_of(model_id, request).values()]
        return JSONResponse(sim._page("processes", items, request))

    @router.get("/processes/{process_id}")
    async def process_metadata(model_id: str, process_id: str, request: Request) -> Response:
        await who(request)
        process = processes_of(model_id, request).get(process_id)
        if process is None:
            raise _api_error(404, request.url.path)
        return JSONResponse(_envelope("processMetadata", {"name": process.name, "actions": list(process.actions)}))

    @router.post("/processes/{process_id}/tasks")
    async def start_process(model_id: str, process_id: str, request: Request) -> Response:
        user = await who(request)
        process = processes_of(model_id, request).get(process_id)
        if process is None:
            raise _api_error(404, request.url.path)
        model = sim._model(request.path_params.get("workspace_id"), model_id, request)
        sim._check_writable(model, request)
        task_id = _hex32(upper=True)
        task = {"taskId": task_id, "processId": process_id, "taskState": "NOT_STARTED", "user": user,
                "creationTime": int(time.time() * 1000), "currentStep": "Waiting.", "progress": 0.0}
        actions(sim).process_tasks[task_id] = task

        async def run() -> None:
            await asyncio.sleep(sim.faults.task_timing.run_s)
            outcome = sim.faults.task_outcome
            if outcome.count is not None:
                if outcome.count <= 0:
                    outcome = TaskOutcome()
                else:
                    sim.faults.task_outcome.count = outcome.count - 1
            nested = []
            for import_id in process.actions:
                step = _Task(task_id=f"{task_id}-{import_id}", import_id=import_id, model_id=model.id, user=user,
                             creation_ms=task["creationTime"])
                result = sim._execute_import(model, step, outcome)
                nested.append(result)
                if not result["successful"]:
                    break  # a failed step stops the process; earlier steps stay applied (non-atomic)
            task["result"] = {"successful": all(r["successful"] for r in nested) and len(nested) == len(process.actions),
                              "failureDumpAvailable": any(r.get("failureDumpAvailable") for r in nested),
                              "objectId": process_id, "objectName": process.name, "nestedResults": nested}
            task.update(taskState="COMPLETE", progress=1.0,
                        currentStep="Complete." if task["result"]["successful"] else "Failed.")

        asyncio.get_running_loop().create_task(run())
        return JSONResponse(_envelope("task", {"taskId": task_id, "taskState": "NOT_STARTED",
                                               "creationTime": task["creationTime"]}))

    @router.get("/processes/{process_id}/tasks")
    async def process_tasks(model_id: str, process_id: str, request: Request) -> Response:
        await who(request)
        tasks = sorted((t for t in actions(sim).process_tasks.values() if t["processId"] == process_id),
                       key=lambda t: t["creationTime"], reverse=request.query_params.get("sort") == "-creationTime")
        items = [{"taskId": t["taskId"], "taskState": t["taskState"], "creationTime": t["creationTime"]} for t in tasks]
        return JSONResponse(sim._page("tasks", items, request))

    @router.get("/processes/{process_id}/tasks/{task_id}")
    async def process_task(model_id: str, process_id: str, task_id: str, request: Request) -> Response:
        await who(request)
        task = actions(sim).process_tasks.get(task_id)
        if task is None or task["processId"] != process_id:
            raise _api_error(404, request.url.path)
        return JSONResponse(_envelope("task", {k: v for k, v in task.items() if k not in ("user", "processId")}))

    def nested_dump(task_id: str, object_id: str, request: Request) -> bytes:
        task = actions(sim).process_tasks.get(task_id)
        dump = sim._dumps.get((task["user"], object_id)) if task else None
        if dump is None or not dump.task_id.startswith(task_id):
            raise _api_error(404, request.url.path)
        return dump.data

    @router.get("/processes/{process_id}/tasks/{task_id}/dumps/{object_id}/chunks")
    async def nested_dump_chunks(model_id: str, process_id: str, task_id: str, object_id: str,
                                 request: Request) -> Response:
        await who(request)
        data = nested_dump(task_id, object_id, request)
        size = sim.faults.dump_chunk_bytes
        count = max(1, -(-len(data) // size))
        return JSONResponse(_envelope("chunks", [{"id": str(k), "name": f"Chunk {k}"} for k in range(count)]))

    @router.get("/processes/{process_id}/tasks/{task_id}/dumps/{object_id}/chunks/{chunk_id}")
    async def nested_dump_chunk(model_id: str, process_id: str, task_id: str, object_id: str, chunk_id: str,
                                request: Request) -> Response:
        await who(request)
        data = nested_dump(task_id, object_id, request)
        size = sim.faults.dump_chunk_bytes
        k = int(chunk_id) if chunk_id.isdigit() else -1
        if k < 0 or k * size >= max(1, len(data)):
            raise _api_error(404, request.url.path)
        return Response(data[k * size:(k + 1) * size], media_type="application/octet-stream")

    # ------------------------------------------------------------------------------------- lists

    def list_state(model_id: str, list_id: str, request: Request) -> ListState:
        sim._model(request.path_params.get("workspace_id"), model_id, request)
        state = actions(sim).lists.get(model_id, {}).get(list_id)
        if state is None:
            raise _api_error(404, request.url.path)
        return state

    @router.get("/lists")
    async def lists(model_id: str, request: Request) -> Response:
        await who(request)
        sim._model(request.path_params.get("workspace_id"), model_id, request)
        items = [{"id": s.spec.id, "name": s.spec.name} for s in actions(sim).lists.get(model_id, {}).values()]
        return JSONResponse(sim._page("lists", items, request))

    @router.get("/lists/{list_id}/items")
    async def list_items(model_id: str, list_id: str, request: Request) -> Response:
        await who(request)
        state = list_state(model_id, list_id, request)
        full = request.query_params.get("includeAll") == "true"
        items = [item if full else {k: item[k] for k in ("id", "name", "code")} for item in state.items.values()]
        return JSONResponse(_envelope("listItems", items))

    async def write_items(model_id: str, list_id: str, request: Request, action: str) -> Response:
        user = await who(request)
        if user in actions(sim).non_admins:
            raise _api_error(403, request.url.path, "User is not a workspace administrator")
        state = list_state(model_id, list_id, request)
        model = sim._model(request.path_params.get("workspace_id"), model_id, request)
        sim._check_writable(model, request)
        try:
            body = json.loads(await request.body() or b"{}")
            items = body["items"]
            assert isinstance(items, list)
        except (ValueError, KeyError, AssertionError, TypeError):
            raise _api_error(400, request.url.path, "The body must be {\"items\": [...]}") from None
        if len(items) > MAX_ITEMS:
            raise _api_error(400, request.url.path, f"At most {MAX_ITEMS} items per request; got {len(items)}")
        failures, done = [], 0
        codes = state.by_code()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                failures.append({"requestIndex": index, "failureType": "INVALID_ITEM",
                                 "failureMessageDetails": "an item must be an object"})
                continue
            unknown = set((item.get("properties") or {})) - set(state.spec.properties)
            if unknown:
                failures.append({"requestIndex": index, "failureType": "UNKNOWN_PROPERTY",
                                 "failureMessageDetails": f"{state.spec.name} has no property "
                                                          f"{sorted(unknown)[0]!r}"})
                continue
            if action == "add":
                if not str(item.get("name") or "").strip():
                    failures.append({"requestIndex": index, "failureType": "MISSING_NAME",
                                     "failureMessageDetails": "An item needs a name"})
                elif item.get("code") and item["code"] in codes:
                    failures.append({"requestIndex": index, "failureType": "DUPLICATE_CODE",
                                     "failureMessageDetails": f"Code {item['code']!r} is already used"})
                else:
                    codes[item.get("code") or ""] = _store(state, item)
                    done += 1
            elif action == "update":
                target = state.items.get(str(item.get("id"))) or codes.get(str(item.get("code") or ""))
                if target is None:
                    failures.append({"requestIndex": index, "failureType": "ITEM_NOT_FOUND",
                                     "failureMessageDetails": f"No item with id {item.get('id')!r} or code "
                                                              f"{item.get('code')!r}"})
                    continue
                if item.get("name"):
                    target["name"] = item["name"]
                if item.get("parent") is not None:
                    target["parent"] = item["parent"]
                target["properties"].update(item.get("properties") or {})
                done += 1
            else:  # delete
                target = state.items.get(str(item.get("id"))) or codes.get(str(item.get("code") or ""))
                if target is None:
                    failures.append({"requestIndex": index, "failureType": "ITEM_NOT_FOUND",
                                     "failureMessageDetails": "no such item"})
                    continue
                del state.items[target["id"]]
                done += 1
        counted = {"add": "added", "update": "updated", "delete": "deleted"}[action]
        extra = {counted: done, "total": len(items), "ignored": len(failures)}
        if failures:
            extra["failures"] = failures
        return JSONResponse(_envelope(**extra))

    @router.post("/lists/{list_id}/items")
    async def add_or_delete(model_id: str, list_id: str, request: Request) -> Response:
        action = request.query_params.get("action")
        if action not in ("add", "delete"):
            raise _api_error(400, request.url.path, "action must be add or delete")
        return await write_items(model_id, list_id, request, action)

    @router.put("/lists/{list_id}/items")
    async def update(model_id: str, list_id: str, request: Request) -> Response:
        return await write_items(model_id, list_id, request, "update")

    return router
