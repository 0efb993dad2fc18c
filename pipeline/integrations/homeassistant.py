"""Home Assistant MQTT discovery: what to announce for the run's streams and the gallery's people.

Home Assistant reads retained JSON configs on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``
and removes an entity when its config topic gets an empty retained message. Entity ids are proposed with
``default_entity_id`` (Home Assistant 2025.10 replaced ``object_id`` with it), e.g.
``binary_sensor.facestream_door_lin_manuel_miranda``. Per stream one ``sensor``
("last person recognised"), per enrolled person and stream one ``binary_sensor`` (occupancy, the retained
``ON``/``OFF`` presence topic of `pipeline.integrations.mqtt`). `Discovery` keeps what was announced and
yields the differences when the gallery changes (people enrolled or removed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def topic_part(name: str) -> str:
    """A name as one MQTT topic level and Home Assistant id: anything but ``[A-Za-z0-9_.-]`` becomes ``_``
    (no ``/``, ``+``, ``#`` or spaces)."""
    return _UNSAFE.sub("_", name) or "_"


def presence_topic(prefix: str, stream_id: str, person: str) -> str:
    return f"{prefix}/{topic_part(stream_id)}/people/{topic_part(person)}"


def last_person_topic(prefix: str, stream_id: str) -> str:
    return f"{prefix}/{topic_part(stream_id)}/last_person"


def availability_topic(prefix: str) -> str:
    return f"{prefix}/availability"


def _device(prefix: str, stream_id: str) -> dict[str, Any]:
    return {"identifiers": [f"{topic_part(prefix)}_{topic_part(stream_id)}"], "name": f"facestream {stream_id}",
            "manufacturer": "facestream", "model": "face recognition stream"}  # fmt: skip


def stream_config(prefix: str, discovery_prefix: str, stream_id: str) -> tuple[str, dict[str, Any]]:
    """The "last person recognised" sensor of one stream: (config topic, payload)."""
    node = f"{topic_part(prefix)}_{topic_part(stream_id)}"
    state = last_person_topic(prefix, stream_id)
    payload = {
        "name": "Last person recognised",
        "unique_id": f"{node}_last_person",
        "default_entity_id": f"sensor.{node}_last_person".lower(),
        "state_topic": state,
        "json_attributes_topic": f"{state}/attributes",
        "availability_topic": availability_topic(prefix),
        "icon": "mdi:face-recognition",
        "device": _device(prefix, stream_id),
    }
    return f"{discovery_prefix}/sensor/{node}/last_person/config", payload


def person_config(prefix: str, discovery_prefix: str, stream_id: str, person: str) -> tuple[str, dict[str, Any]]:
    """The presence binary sensor of one person on one stream: (config topic, payload)."""
    node, slug = f"{topic_part(prefix)}_{topic_part(stream_id)}", topic_part(person)
    state = presence_topic(prefix, stream_id, person)
    payload = {
        "name": f"{person.replace('_', ' ')} present",
        "unique_id": f"{node}_{slug}",
        "default_entity_id": f"binary_sensor.{node}_{slug}".lower(),
        "state_topic": state,
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "occupancy",
        "json_attributes_topic": f"{state}/attributes",
        "availability_topic": availability_topic(prefix),
        "device": _device(prefix, stream_id),
    }
    return f"{discovery_prefix}/binary_sensor/{node}/{slug}/config", payload


def camera_config(prefix: str, discovery_prefix: str, stream_id: str) -> tuple[str, dict[str, Any]]:
    """The snapshot camera of one stream (the JPEG of the last identification): (config topic, payload)."""
    node = f"{topic_part(prefix)}_{topic_part(stream_id)}"
    payload = {
        "name": "Last identification",
        "unique_id": f"{node}_snapshot",
        "default_entity_id": f"camera.{node}_snapshot".lower(),
        "topic": f"{prefix}/{topic_part(stream_id)}/snapshot",
        "availability_topic": availability_topic(prefix),
        "device": _device(prefix, stream_id),
    }
    return f"{discovery_prefix}/camera/{node}/snapshot/config", payload


def discovery_configs(prefix: str, discovery_prefix: str, streams: list[str], people: list[str],
                      cameras: bool = False) -> dict[str, bytes]:  # fmt: skip
    """Every config message for these streams and people: {topic: JSON payload}."""
    configs: dict[str, bytes] = {}
    for stream_id in streams:
        topic, payload = stream_config(prefix, discovery_prefix, stream_id)
        configs[topic] = json.dumps(payload, sort_keys=True).encode()
        if cameras:
            topic, payload = camera_config(prefix, discovery_prefix, stream_id)
            configs[topic] = json.dumps(payload, sort_keys=True).encode()
        for person in people:
            topic, payload = person_config(prefix, discovery_prefix, stream_id, person)
            configs[topic] = json.dumps(payload, sort_keys=True).encode()
    return configs


class Discovery:
    """What has been announced; `update(people)` gives the messages to publish: new or changed configs, and an
    empty payload (removal) for every config of a person no longer enrolled."""

    def __init__(self, prefix: str, discovery_prefix: str, streams: list[str], cameras: bool = False) -> None:
        self.prefix, self.discovery_prefix, self.streams = prefix, discovery_prefix, list(streams)
        self.cameras = cameras
        self.announced: dict[str, bytes] = {}

    def update(self, people: list[str]) -> list[tuple[str, bytes]]:
        wanted = discovery_configs(self.prefix, self.discovery_prefix, self.streams, people, self.cameras)
        changes = [(topic, payload) for topic, payload in wanted.items() if self.announced.get(topic) != payload]
        changes += [(topic, b"") for topic in self.announced if topic not in wanted]
        self.announced = wanted
        return changes

    def current(self) -> list[tuple[str, bytes]]:
        """Everything announced (re-published after a reconnect: a broker without persistence forgets)."""
        return list(self.announced.items())


class GalleryPeople:
    """The names enrolled in a gallery file, re-read only when its people revision changes. Never creates the
    file (a gallery that does not exist yet has nobody)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.store: Any = None
        self.revision: int | None = None
        self.names: list[str] = []

    def poll(self) -> list[str] | None:
        """The names when they changed since the last call (the first call always answers), else None."""
        if self.store is None:
            if not self.path.is_file():
                if self.revision is None:
                    self.revision = -1
                    return []
                return None
            from ...enroll.store import Store

            self.store = Store(self.path, busy_timeout=5.0)
        revision = self.store.state().people_revision
        if revision == self.revision:
            return None
        self.revision = revision
        self.names = [person.name for person in self.store.people()]
        return self.names

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
