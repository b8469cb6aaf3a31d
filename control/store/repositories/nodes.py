"""Inference nodes (``inference_nodes``): enrollment, registration, heartbeats, drain."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.domain.records import Node, ServedModel
from control.store.models import InferenceNodeRow


def to_node(row: InferenceNodeRow) -> Node:
    return Node(
        id=row.id,
        name=row.name,
        secret_hash=row.secret_hash,
        created_by=row.created_by,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        draining=row.draining,
        registered_at=row.registered_at,
        last_heartbeat_at=row.last_heartbeat_at,
        engine=row.engine,
        base_url=row.base_url,
        state=row.state,
        models=tuple(ServedModel(m["name"], m["engine_model"]) for m in json.loads(row.models)),
        report=json.loads(row.report),
    )


class NodeRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *, id: str, name: str, secret_hash: str, created_by: str | None) -> Node:
        row = InferenceNodeRow(id=id, name=name, secret_hash=secret_hash, created_by=created_by, draining=False)
        self.session.add(row)
        self.session.flush()
        return to_node(row)

    def get(self, node_id: str) -> Node | None:
        row = self.session.get(InferenceNodeRow, node_id)
        return None if row is None else to_node(row)

    def live(self) -> list[Node]:
        """Every node not deleted, oldest first."""
        query = select(InferenceNodeRow).where(InferenceNodeRow.revoked_at.is_(None)).order_by(InferenceNodeRow.id)
        return [to_node(row) for row in self.session.scalars(query)]

    def report(
        self,
        node_id: str,
        *,
        when: datetime,
        state: str,
        report: dict[str, Any],
        register: bool,
        engine: str | None = None,
        base_url: str | None = None,
        models: list[ServedModel] | None = None,
    ) -> Node | None:
        row = self.session.get(InferenceNodeRow, node_id)
        if row is None:
            return None
        if register:
            row.registered_at = when
        if engine is not None:
            row.engine = engine
        if base_url is not None:
            row.base_url = base_url
        if models is not None:
            row.models = json.dumps([{"name": m.name, "engine_model": m.engine_model} for m in models])
        row.state = state
        row.report = json.dumps(report, default=str)
        row.last_heartbeat_at = when
        self.session.flush()
        return to_node(row)

    def set_draining(self, node_id: str, draining: bool) -> Node | None:
        row = self.session.get(InferenceNodeRow, node_id)
        if row is None:
            return None
        row.draining = draining
        self.session.flush()
        return to_node(row)

    def revoke(self, node_id: str, when: datetime) -> Node | None:
        row = self.session.get(InferenceNodeRow, node_id)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = when
            self.session.flush()
        return to_node(row)
