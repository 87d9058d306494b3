"""Open-Assistant message trees (OASST1/2): a dataset-level format, rebuilt into conversations tree by tree."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chatalign.data.registry import Adapter, add_adapter
from chatalign.data.schemas import DataValidationError, check_content, validate_messages

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class _OasstNode:
    row: int
    message_id: str
    parent_id: str | None
    role: str
    text: str
    rank: float | None
    tree_id: str
    children: list


def oasst_trees_to_conversations(
    rows: Iterable[Mapping],
    best_only: bool = True,
    lang: str | Iterable[str] | None = None,
    *,
    source: str = "oasst",
    skip_invalid: bool = False,
    counts: Counter | None = None,
) -> list[dict]:
    """Open-Assistant message rows (OASST1/2 schema) -> sft rows ``{"messages", "prompt_id"=message_tree_id}``.

    Each tree is rebuilt from parent_id links. ``best_only`` follows, from the root, the best-ranked child at each
    step (rank 0 = best; unranked after ranked; ties by input order); otherwise every root-to-leaf path is emitted.
    A path ending with a prompter message loses that message; paths left without an assistant reply are dropped.
    Deleted messages, messages with review_result False and (with ``lang``) other languages are skipped together with
    their replies. Skips are counted in ``counts`` ("deleted", "failed review", "other language", "unreachable" for
    replies under a skipped or absent message, "no assistant reply" per dropped path). Malformed messages raise
    DataValidationError (row = message row) unless ``skip_invalid``, which counts them by reason.
    """
    counts = counts if counts is not None else Counter()
    languages = {lang} if isinstance(lang, str) else (set(lang) if lang is not None else None)

    def bad(index: int, field: str, reason: str, detail: str) -> None:
        if not skip_invalid:
            raise DataValidationError(source, detail, row=index, field=field, reason=reason)
        counts[reason] += 1

    nodes: dict[str, _OasstNode] = {}
    for index, row in enumerate(rows):
        message_id, role, text = row.get("message_id"), row.get("role"), row.get("text")
        if not isinstance(message_id, str) or not message_id:
            bad(index, "message_id", "missing value", "message_id is missing")
            continue
        if row.get("deleted"):
            counts["deleted"] += 1
            continue
        if row.get("review_result") is False:
            counts["failed review"] += 1
            continue
        if languages is not None and row.get("lang") not in languages:
            counts["other language"] += 1
            continue
        if role not in OASST_ROLES:
            bad(index, "role", "unknown role", f"unknown role {role!r} (expected one of prompter, assistant)")
            continue
        problem = check_content(text, "text")
        if problem is not None:
            bad(index, "text", problem.reason, problem.detail)
            continue
        parent_id = row.get("parent_id")
        rank = row.get("rank")
        nodes[message_id] = _OasstNode(
            index,
            message_id,
            parent_id,
            OASST_ROLES[role],
            text,
            None if rank is None else float(rank),
            row.get("message_tree_id") or message_id,
            [],
        )

    roots = []
    for node in nodes.values():
        if node.parent_id is None:
            roots.append(node)
        elif node.parent_id in nodes:
            nodes[node.parent_id].children.append(node)
    reachable = 0

    def best_child(node: _OasstNode) -> _OasstNode:
        # Stable sort keeps input order among equal ranks; None (unranked) after every ranked reply.
        return sorted(node.children, key=lambda c: (c.rank is None, c.rank or 0.0))[0]

    paths: list[list[_OasstNode]] = []
    for root in roots:
        if best_only:
            path = [root]
            while path[-1].children:
                path.append(best_child(path[-1]))
            paths.append(path)
        else:
            stack = [[root]]
            while stack:
                path = stack.pop()
                if path[-1].children:
                    stack.extend(path + [child] for child in reversed(path[-1].children))
                else:
                    paths.append(path)
        # Count the whole tree as reachable, whatever paths were picked.
        todo = [root]
        while todo:
            current = todo.pop()
            reachable += 1
            todo.extend(current.children)
    counts["unreachable"] += len(nodes) - reachable
    if not counts["unreachable"]:
        del counts["unreachable"]

    conversations, seen = [], set()
    for path in paths:
        if path[-1].role == "user":
            path = path[:-1]
        if not any(node.role == "assistant" for node in path):
            counts["no assistant reply"] += 1
            continue
        key = tuple(node.message_id for node in path)
        if key in seen:  # two prompter leaves under one reply trim to the same path
            continue
        seen.add(key)
        messages = [{"role": node.role, "content": node.text} for node in path]
        problem = validate_messages(messages, "messages", final_roles=("assistant",))
        if problem is not None:
            match = re.match(r"messages\[(\d+)\]", problem.field)
            node = path[int(match.group(1))] if match else path[0]
            bad(node.row, "role", problem.reason, problem.detail + " (in the OASST message tree)")
            continue
        conversations.append({"messages": messages, "prompt_id": path[0].tree_id})
    return conversations


add_adapter(
    Adapter(
        name="oasst",
        schema="sft",
        convert=None,
        required_columns=("message_id", "parent_id", "role", "text"),
        detect=(frozenset({"message_id", "parent_id", "message_tree_id", "role", "text"}),),
        priority=5,
        description="Open-Assistant message trees -> sft conversations (dataset-level, best-ranked path per tree).",
        convert_dataset=oasst_trees_to_conversations,
    ),
    replace=False,
)
